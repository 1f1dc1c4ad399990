"""A minimal image-classification script shaped like torchvision's references/classification/train.py.

Our own code (not a copy): the same function names and signatures, the lines the documented lskd
patch anchors on, ``args`` saved in checkpoints, ``--mixup-alpha`` through
``torchvision.transforms.v2.MixUp``, and ``--resume`` loading with ``weights_only=True`` after
allowing ``argparse.Namespace``. tests/test_torchvision_reference.py patches it with the hunks
from the docs and runs it on torchvision's FakeData on the CPU.
"""

import argparse
import os

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2

NUM_CLASSES = 4


def train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, args, model_ema=None, scaler=None):
    model.train()
    losses = []
    for image, target in data_loader:
        image, target = image.to(device), target.to(device)
        with torch.autocast(device.type, enabled=scaler is not None):
            output = model(image)
            loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def evaluate(model, criterion, data_loader, device):
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for image, target in data_loader:
            image, target = image.to(device), target.to(device)
            output = model(image)
            loss = criterion(output, target)
            total += loss.item() * image.shape[0]
            count += image.shape[0]
    return total / count


def load_data(args):
    transform = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])
    size = (3, args.image_size, args.image_size)
    dataset = torchvision.datasets.FakeData(args.train_size, size, NUM_CLASSES, transform=transform)
    dataset_test = torchvision.datasets.FakeData(8, size, NUM_CLASSES, transform=transform, random_offset=10_000)
    return dataset, dataset_test


def main(args):
    torch.serialization.add_safe_globals([argparse.Namespace])  # the checkpoints hold args
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    dataset, dataset_test = load_data(args)
    num_classes = NUM_CLASSES
    collate_fn = None
    if args.mixup_alpha > 0:
        mixup = v2.MixUp(alpha=args.mixup_alpha, num_classes=num_classes)

        def collate_fn(batch):
            return mixup(*default_collate(batch))

    data_loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, collate_fn=collate_fn)
    data_loader_test = DataLoader(dataset_test, batch_size=args.batch_size)
    model = torchvision.models.get_model(args.model, weights=None, num_classes=num_classes)
    model.to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    if args.resume:
        checkpoint = torch.load(args.resume, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        args.start_epoch = checkpoint["epoch"] + 1
    losses = []
    for epoch in range(args.start_epoch, args.epochs):
        losses += train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, args)
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "args": args}
        torch.save(checkpoint, os.path.join(args.output_dir, "checkpoint.pth"))
    return {"losses": losses, "val_loss": evaluate(model, criterion, data_loader_test, device), "model": model}


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(description="reference-shaped classification training", add_help=add_help)
    parser.add_argument("--model", default="resnet18", type=str)
    parser.add_argument("--device", default="cpu", type=str)
    parser.add_argument("-b", "--batch-size", default=8, type=int)
    parser.add_argument("--epochs", default=1, type=int)
    parser.add_argument("--lr", default=0.05, type=float)
    parser.add_argument("--label-smoothing", default=0.0, type=float)
    parser.add_argument("--mixup-alpha", default=0.0, type=float)
    parser.add_argument("--output-dir", default=".", type=str)
    parser.add_argument("--resume", default="", type=str)
    parser.add_argument("--start-epoch", default=0, type=int)
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--image-size", default=16, type=int)
    parser.add_argument("--train-size", default=16, type=int)
    return parser


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    main(args)
