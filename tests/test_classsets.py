"""S1/S2 selection (App. G): WordNet, JSON parent maps, Fashion-MNIST, feature space, agreement."""

import json

import numpy as np
import pytest
from conftest import WORDNET_DIR, needs_wordnet

from lskd_core.classsets import (
    FASHION_MNIST_CLASSES,
    ClassHierarchy,
    fashion_mnist_parents,
    fashion_mnist_wnids,
    feature_space_sets,
    hierarchy_sets,
    load_parent_map,
    load_wordnet,
    set_agreement,
    wnid_to_offset,
    wordnet_parents,
)


@pytest.fixture(scope="module")
def wn():
    return load_wordnet(WORDNET_DIR)


# ----------------------------------------------------------------------------------------------
# the data.noun parser on a fixture we write ourselves
# ----------------------------------------------------------------------------------------------
# offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt(3 digits) [sym offset pos src/tgt]...
FIXTURE = "".join(line + "\n" for line in [
    '  1 This software and database is being provided to you, the LICENSEE, by',
    '  2 Princeton University under the following license.',
]) + "".join(line + "  \n" for line in [  # data.noun lines end with two spaces
    '00000001 03 n 01 thing 0 000 | the root',
    '00000010 03 n 02 animal 0 beast 0 002 @ 00000001 n 0000 ~ 00000100 n 0000 | a living thing',
    '00000011 03 n 01 vehicle 0 001 @ 00000001 n 0000 | a conveyance',
    '00000100 05 n 01 dog 0 002 @ 00000010 n 0000 #m 00000011 n 0000 | a domestic canine',
    '00000101 05 n 01 Rex 0 001 @i 00000100 n 0000 | a famous dog',
    '00000102 05 n 0a hybrid_thing 0 a 0 b 0 c 0 d 0 e 0 f 0 g 0 h 0 i 0 002 @ 00000011 n 0000 @ 00000100 n 0000 | ten lemmas, two hypernyms',
])


def test_parser_follows_hypernyms_and_instances(tmp_path, monkeypatch):
    (tmp_path / "data.noun").write_text(FIXTURE)
    monkeypatch.setenv("LSKD_WORDNET_DIR", str(tmp_path))
    w = load_wordnet()
    assert len(w) == 6
    assert w.name("n00000010") == "animal" and w.gloss("n00000010") == "a living thing"
    assert w.hypernyms("n00000100") == ("n00000010",)  # '#m' (member holonym) is not a hypernym
    assert w.hypernyms("n00000101") == ("n00000100",)  # '@i' instance hypernym is followed
    assert w.hypernyms("n00000102") == ("n00000011", "n00000100")  # hex lemma count 0a = 10
    assert w.ancestors("n00000101") == {"n00000101": 0, "n00000100": 1, "n00000010": 2,
                                        "n00000001": 3}
    parents = wordnet_parents(["n00000101", "n00000011"], w)
    assert parents == {"n00000101": ["n00000100"], "n00000011": ["n00000001"],
                       "n00000100": ["n00000010"], "n00000010": ["n00000001"], "n00000001": []}
    with pytest.raises(ValueError, match="not a noun synset"):
        w.hypernyms("n09999999")
    with pytest.raises(ValueError, match="not a WordNet noun id"):
        w.hypernyms("dog")


def test_missing_wordnet_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        load_wordnet(str(tmp_path / "nowhere"))


def test_wnid_to_offset():
    assert wnid_to_offset("n02085620") == 2085620
    with pytest.raises(ValueError):
        wnid_to_offset("02085620")


# ----------------------------------------------------------------------------------------------
# the real WordNet 3.0
# ----------------------------------------------------------------------------------------------

TOY_DOGS = ["n02085620", "n02085782", "n02085936", "n02086079", "n02086240"]  # Chihuahua..Shih-Tzu
RETRIEVERS = ["n02099267", "n02099429", "n02099601", "n02099712", "n02099849"]
HOUNDS = ["n02088364", "n02088466", "n02089867"]  # beagle, bloodhound, Walker hound
OTHERS = ["n04037443", "n02690373", "n03417042", "n01728572", "n01531178", "n07747607",
          "n02123045", "n02129165", "n01440764", "n03792782", "n04254680", "n02504458"]


@needs_wordnet
def test_wordnet_chihuahua_is_nearer_japanese_spaniel_than_racer(wn):
    assert wn.name("n02085620") == "Chihuahua"
    assert wn.name("n02085782") == "Japanese_spaniel"
    assert wn.name("n04037443") == "racer"
    classes = ["n02085620", "n02085782", "n04037443"]
    h = ClassHierarchy(wordnet_parents(classes, wn), classes)
    d = h.distances_from(0)
    assert d[1] == 2  # both are toy dogs
    assert d[1] < d[2]


@needs_wordnet
def test_wordnet_hierarchy_sets_on_imagenet_classes(wn):
    classes = TOY_DOGS + RETRIEVERS + HOUNDS + OTHERS
    parents = wordnet_parents(classes, wn)
    s1, s2 = hierarchy_sets(parents, classes, 0, num_similar=4, num_dissimilar=8, seed=0)
    assert sorted(s1) == [1, 2, 3, 4]  # the other toy dogs
    dogs = set(range(len(TOY_DOGS) + len(RETRIEVERS) + len(HOUNDS)))
    assert not set(s2) & dogs  # S2 avoids the subtree of `dog` (parent of toy_dog)
    assert len(s2) == 8 and len(set(s2)) == 8
    # a retriever: S1 = retrievers; S2 avoids sporting dogs only (exclude_levels=1) ...
    t = len(TOY_DOGS)
    s1, s2 = hierarchy_sets(parents, classes, t, num_similar=4, num_dissimilar=20, seed=1)
    assert sorted(s1) == [t + 1, t + 2, t + 3, t + 4]
    assert not set(s2) & set(range(t, t + 5))
    # ... and every dog with exclude_levels=3 (retriever -> sporting_dog -> hunting_dog -> dog)
    s1b, s2b = hierarchy_sets(parents, classes, t, 4, 10, seed=1, exclude_levels=3)
    assert not set(s2b) & dogs


@needs_wordnet
def test_fashion_mnist_groups_from_wordnet(wn):
    wnids = fashion_mnist_wnids()
    assert list(wnids) == FASHION_MNIST_CLASSES
    names = {c: wn.name(w) for c, w in wnids.items()}
    assert names["Sneaker"] == "gym_shoe" and names["Ankle boot"] == "boot"
    assert names["T-shirt/top"] == "jersey" and names["Bag"] == "bag"
    parents = fashion_mnist_parents(wn)
    h = ClassHierarchy(parents, FASHION_MNIST_CLASSES)
    groups = [["T-shirt/top", "Pullover", "Coat", "Shirt"], ["Dress", "Trouser"],
              ["Sandal", "Sneaker", "Ankle boot"], ["Bag"]]
    idx = {c: i for i, c in enumerate(FASHION_MNIST_CLASSES)}
    for group in groups:
        for c in group:
            d = h.distances_from(idx[c])
            inside = [d[idx[o]] for o in group if o != c]
            outside = [d[idx[o]] for o in FASHION_MNIST_CLASSES if o not in group]
            if inside:  # every class of its group is nearer than every class outside it
                assert max(inside) < min(outside), (c, inside, outside)
    # the groups are subtrees: upper-body garments under the gloss-derived region node
    up = {i: h.up[idx[c]] for i, c in enumerate(FASHION_MNIST_CLASSES)}
    for c in groups[0]:
        assert "n03051540/upper_body" in up[idx[c]]
    for c in groups[1]:
        assert "n03051540/other" in up[idx[c]]
    for c in groups[2]:
        assert "n03380867" in up[idx[c]]  # footwear
    assert "n03051540" not in up[idx["Bag"]] and "n03380867" not in up[idx["Bag"]]
    # S1/S2 for Shirt: the other upper-body garments; S2 outside clothing
    s1, s2 = h.sets(idx["Shirt"], num_similar=3, num_dissimilar=4)
    assert sorted(s1) == sorted(idx[c] for c in groups[0] if c != "Shirt")
    assert sorted(s2) == sorted(idx[c] for c in groups[2] + groups[3])


@needs_wordnet
def test_fashion_mnist_raw_wordnet_keeps_trouser_with_garments(wn):
    """Documents why the body-region split exists: raw hypernyms group trouser with shirts."""
    raw = fashion_mnist_parents(wn, body_regions=False)
    h = ClassHierarchy(raw, FASHION_MNIST_CLASSES)
    garment = "n03419014"
    under = sorted(c for i, c in enumerate(FASHION_MNIST_CLASSES) if garment in h.up[i])
    assert under == sorted(["T-shirt/top", "Trouser", "Pullover", "Coat", "Shirt"])
    assert wn.name(garment) == "garment"


# ----------------------------------------------------------------------------------------------
# JSON parent maps and the S1/S2 rule
# ----------------------------------------------------------------------------------------------

BIRDS = {  # a CUB-like toy: families under orders
    "Loggerhead_Shrike": "Laniidae", "Great_Grey_Shrike": "Laniidae",
    "Laniidae": "Passeriformes", "Corvidae": "Passeriformes",
    "Blue_Jay": "Corvidae", "Florida_Jay": "Corvidae", "Green_Jay": "Corvidae",
    "Passeriformes": "birds",
    "Black_footed_Albatross": "Diomedeidae", "Laysan_Albatross": "Diomedeidae",
    "Diomedeidae": "Procellariiformes", "Procellariiformes": "birds",
    "Pelecanidae": "Pelecaniformes", "Brown_Pelican": "Pelecanidae",
    "White_Pelican": "Pelecanidae", "Pelecaniformes": "birds", "birds": None,
}
BIRD_CLASSES = ["Loggerhead_Shrike", "Great_Grey_Shrike", "Blue_Jay", "Florida_Jay", "Green_Jay",
                "Black_footed_Albatross", "Laysan_Albatross", "Brown_Pelican", "White_Pelican"]


def test_parent_map_json_and_sets(tmp_path):
    path = tmp_path / "birds.json"
    path.write_text(json.dumps(BIRDS))
    parents = load_parent_map(path)
    assert parents["birds"] == [] and parents["Blue_Jay"] == ["Corvidae"]
    h = ClassHierarchy(parents, BIRD_CLASSES)
    # distances: shrike-shrike 2 (same family), shrike-jay 4 (same order), shrike-albatross 6
    np.testing.assert_array_equal(h.distances_from(0), [0, 2, 4, 4, 4, 6, 6, 6, 6])
    s1, s2 = h.sets(0, num_similar=1, num_dissimilar=3, seed=0)
    assert s1 == [1]
    # neighbourhood root Laniidae; its parent Passeriformes is excluded -> no jays in S2
    assert set(s2) <= {5, 6, 7, 8} and len(s2) == 3
    # three jays tie at distance 4 for the 2 remaining S1 places: chosen by name, and the same
    # named classes whatever the class order
    s1, _ = h.sets(0, num_similar=3, num_dissimilar=2)
    assert s1[0] == 1 and set(s1[1:]) < {2, 3, 4}
    rev = BIRD_CLASSES[::-1]
    s1r, _ = ClassHierarchy(parents, rev).sets(rev.index(BIRD_CLASSES[0]), 3, 2)
    assert {rev[c] for c in s1r} == {BIRD_CLASSES[c] for c in s1}
    # deterministic per seed, different across seeds
    draws = {tuple(h.sets(0, 1, 2, seed=s)[1]) for s in range(12)}
    assert h.sets(0, 1, 2, seed=5) == h.sets(0, 1, 2, seed=5)
    assert len(draws) > 1
    # too few classes outside even the S1 neighbourhood: exclusion falls back, then errors
    s1, s2 = h.sets(5, num_similar=1, num_dissimilar=7)  # 7 = everything but the albatrosses
    assert s1 == [6] and sorted(s2) == [0, 1, 2, 3, 4, 7, 8]
    with pytest.raises(ValueError, match="only 7 class"):
        h.sets(5, num_similar=1, num_dissimilar=8)


def test_parent_map_errors(tmp_path):
    cyc = tmp_path / "cyc.json"
    cyc.write_text(json.dumps({"a": "b", "b": "c", "c": "a"}))
    with pytest.raises(ValueError, match="cycle"):
        load_parent_map(cyc)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_parent_map(bad)
    with pytest.raises(FileNotFoundError):
        load_parent_map(tmp_path / "none.json")
    with pytest.raises(ValueError, match="class 1 \\(node 'Kiwi'\\) is not in the hierarchy"):
        ClassHierarchy({"a": ["root"]}, ["a", "Kiwi"])
    with pytest.raises(ValueError, match="same hierarchy node"):
        ClassHierarchy({"a": ["root"]}, ["a", "a"])


# ----------------------------------------------------------------------------------------------
# feature space (App. G.2) and agreement (Table G.1)
# ----------------------------------------------------------------------------------------------

def test_feature_space_sets_on_a_line():
    # 11 classes at x = 0, 1, 4, 9, ... (target 0): distance grows with the index
    centroids = np.array([[float(i * i), 0.0] for i in range(11)])
    s1, s2 = feature_space_sets(centroids, 0, closest_pct=10, farthest_pct=50)
    assert s1 == [1] and s2 == [6, 7, 8, 9, 10]
    # target 5 sits at x = 25
    s1, s2 = feature_space_sets(centroids, 5, closest_pct=20, farthest_pct=20)
    assert s1 == [4, 6] and s2 == [9, 10]  # |x - 25|: 9, 11 nearest; 56, 75 farthest
    # at least one class each, even for tiny percentages; NaN rows (no samples) are skipped
    centroids[3] = np.nan
    s1, s2 = feature_space_sets(centroids, 0, closest_pct=0.1, farthest_pct=0.1)
    assert s1 == [1] and s2 == [10]
    with pytest.raises(ValueError, match="<= 100"):
        feature_space_sets(centroids, 0, 20, 90)
    with pytest.raises(ValueError, match="no centroid"):
        feature_space_sets(centroids, 3)


def test_feature_space_sets_paper_sizes():
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(1000, 8))
    s1, s2 = feature_space_sets(centroids, 17, 1, 90)  # App. G.2: 10 and 900 of 999
    assert len(s1) == 10 and len(s2) == 900
    assert 17 not in s1 + s2 and not set(s1) & set(s2)
    d = ((centroids - centroids[17]) ** 2).sum(1)
    assert max(d[s1]) <= min(d[s2])
    # Fashion-MNIST: 9 others -> 1 closest; 90 % would be 9, leaving room for 8
    s1, s2 = feature_space_sets(centroids[:10], 0, 1, 90)
    assert len(s1) == 1 and len(s2) == 8


def test_set_agreement():
    assert set_agreement([1, 2, 3, 4], [2, 3, 9]) == 0.5
    assert set_agreement([5], [5, 6]) == 1.0
    assert set_agreement([1, 2], []) == 0.0
    assert set_agreement(np.array([7, 8, 9]), (9,)) == pytest.approx(1 / 3)
    # Table G.1-shaped rows: |S1_qual & S1_quant| / |S1_qual| for |S1| = 4, counted by hand
    qualitative = [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8]]
    quantitative = [[1, 2, 3, 4, 9, 10], [1, 2, 3, 11], [2, 4, 12], [13]]
    got = [set_agreement(a, b) for a, b in zip(qualitative, quantitative)]
    assert got == [1.0, 0.75, 0.5, 0.0]
    assert np.mean(got) == pytest.approx(0.5625)
    # it is |ref & other| / |ref|, not symmetric
    assert set_agreement([1, 2], [1, 2, 3, 4]) == 1.0 and set_agreement([1, 2, 3, 4], [1, 2]) == 0.5
    with pytest.raises(ValueError):
        set_agreement([], [1])


# ----------------------------------------------------------------------------------------------
# S1 ties and the S2 exclusion rule (issue 11, item 5)
# ----------------------------------------------------------------------------------------------
COLUBRIDS = ["n01728572", "n01728920", "n01729322", "n01729977", "n01734418", "n01735189",
             "n01737021", "n01739381", "n01740131"]  # thunder snake first, 8 colubrid siblings
SNAKES_ETC = ["n01742172", "n01744401", "n01748264", "n01749939", "n01751748", "n01753488",
              "n01755581", "n01756291", "n01664065", "n01665541", "n01667114", "n04037443",
              "n02690373", "n07747607", "n02085620", "n02099601"]


def _named_sets(classes, parents, target_name, **kw):
    h = ClassHierarchy(parents, classes)
    s1, s2 = h.sets(classes.index(target_name), **kw)
    return [classes[c] for c in s1], {classes[c] for c in s2}


@needs_wordnet
def test_thunder_snake_ties_do_not_depend_on_class_order(wn):
    classes = COLUBRIDS + SNAKES_ETC
    parents = wordnet_parents(classes, wn)
    h = ClassHierarchy(parents, classes)
    assert list(h.distances_from(0)[1:9]) == [2] * 8  # the tie the old rule broke by index
    ref = _named_sets(classes, parents, COLUBRIDS[0], num_similar=4, num_dissimilar=6)
    assert set(ref[0]) < set(COLUBRIDS[1:])
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = [classes[i] for i in rng.permutation(len(classes))]
        got = _named_sets(perm, parents, COLUBRIDS[0], num_similar=4, num_dissimilar=6)
        assert set(got[0]) == set(ref[0]) and got[1] == ref[1]
    # another seed may pick other siblings (the choice is a seeded draw, keyed by names)
    picks = {frozenset(_named_sets(classes, parents, COLUBRIDS[0], num_similar=4,
                                   num_dissimilar=6, seed=s)[0]) for s in range(6)}
    assert len(picks) > 1


@needs_wordnet
def test_tie_distances_rank_tied_classes_first(wn):
    classes = COLUBRIDS + SNAKES_ETC
    h = ClassHierarchy(wordnet_parents(classes, wn), classes)
    ref = np.full(len(classes), 50.0)
    ref[[8, 7, 5, 3]] = [1.0, 2.0, 3.0, 4.0]  # the reference model puts these siblings nearest
    ref[13] = 0.0  # nearer in the reference model but farther in the tree: the tree decides first
    s1, _ = h.sets(0, 4, 6, tie_distances=ref)
    assert s1 == [8, 7, 5, 3]
    with pytest.raises(ValueError, match="one entry per class"):
        h.sets(0, 4, 6, tie_distances=ref[:-1])


def test_s2_excludes_the_smallest_ancestor_holding_a_tenth_of_the_classes():
    # 100 classes: group A (12 = a1 with 3 classes + a2 with 9) and group B (88 in 8 families)
    parents = {"A": ["root"], "B": ["root"], "root": [], "A1": ["A"], "a1": ["A1"], "a2": ["A"]}
    classes = []
    for i in range(3):
        parents[f"a1_{i}"] = ["a1"]
        classes.append(f"a1_{i}")
    for i in range(9):
        parents[f"a2_{i}"] = ["a2"]
        classes.append(f"a2_{i}")
    for f in range(8):
        parents[f"b{f}"] = ["B"]
        for i in range(11):
            parents[f"b{f}_{i}"] = [f"b{f}"]
            classes.append(f"b{f}_{i}")
    assert len(classes) == 100
    h = ClassHierarchy(parents, classes)
    in_a = set(range(12))
    for seed in range(5):
        s1, s2 = h.sets(0, num_similar=2, num_dissimilar=40, seed=seed)
        assert sorted(s1) == [1, 2]  # r = a1; A1 (3 classes) is too small, A (12 >= 10) is excluded
        assert not set(s2) & in_a and len(s2) == 40
    # the old rule (one level above r: A1) let the rest of A in
    olds = set()
    for seed in range(5):
        olds |= set(h.sets(0, 2, 40, seed=seed, exclude_levels=1)[1])
    assert olds & in_a
    # too few outside A: fall back to A1 = r's parent, then to r itself
    _, s2 = h.sets(0, num_similar=2, num_dissimilar=97)
    assert len(s2) == 97
