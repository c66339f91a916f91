"""Try to train a small DETR from scratch on the shapes world, on CPU, within a time budget.

    cargo run --release -- synth --out data/shapes --seed 0
    .venv/bin/python models/train_detr_shapes.py [--minutes 25] [--out models/detr-shapes]

The model is a narrow ResNet-50-structured DETR (HF ResNet naming, d_model 64, 2+2 layers,
20 queries, 4 classes) at 128x128 (the scenes are 256x256; `--size`). DETR freezes its
BatchNorm; trained from scratch the trunk needs live BatchNorm, so training swaps the frozen
layers for ordinary ones and the saved folder folds their running statistics back (the same
tensor names). Hungarian-matched loss from transformers. Prints the loss and, at the end, the
val recall of ground-truth objects by a prediction of the right class with IoU >= 0.5 and
score > 0.5; saves the folder either way.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

DATA = Path("data/shapes")
NAMES = ["circle", "square", "triangle", "star"]


def live_batch_norm(module):
    for name, child in module.named_children():
        if type(child).__name__ == "DetrFrozenBatchNorm2d":
            bn = torch.nn.BatchNorm2d(child.weight.numel())
            setattr(module, name, bn)
        else:
            live_batch_norm(child)


def load_split(split, processor, limit=None):
    images = sorted((DATA / "images" / split).glob("*.png"))[:limit]
    pixels, targets = [], []
    for path in images:
        image = Image.open(path).convert("RGB")
        pixels.append(processor(images=image, return_tensors="pt")["pixel_values"][0])
        rows = np.loadtxt(DATA / "labels" / split / f"{path.stem}.txt", ndmin=2).reshape(-1, 5)
        rows = rows[rows[:, 0] >= 0]
        targets.append({
            "class_labels": torch.tensor(rows[:, 0], dtype=torch.long),
            "boxes": torch.tensor(rows[:, 1:], dtype=torch.float32),
        })
    return torch.stack(pixels), targets


def box_iou(a, b):
    def corners(x):
        return torch.cat([x[:, :2] - x[:, 2:] / 2, x[:, :2] + x[:, 2:] / 2], 1)
    a, b = corners(a), corners(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(1)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


@torch.no_grad()
def val_recall(model, pixels, targets):
    model.eval()
    found = total = 0
    for i in range(0, len(pixels), 16):
        out = model(pixel_values=pixels[i:i + 16])
        prob = out.logits.softmax(-1)[..., :-1]
        score, label = prob.max(-1)
        for j, t in enumerate(targets[i:i + 16]):
            keep = score[j] > 0.5
            total += len(t["class_labels"])
            if keep.sum() == 0 or len(t["class_labels"]) == 0:
                continue
            iou = box_iou(t["boxes"], out.pred_boxes[j][keep])
            same = t["class_labels"][:, None] == label[j][keep][None, :]
            found += ((iou >= 0.5) & same).any(1).sum().item()
    model.train()
    return found / max(total, 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=25)
    p.add_argument("--out", default="models/detr-shapes")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="input side; the scenes are 256x256")
    p.add_argument("--lr", type=float, default=5e-4)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    processor = DetrImageProcessorPil(size={"shortest_edge": args.size, "longest_edge": args.size})
    backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[32, 64, 128, 256], embedding_size=16,
                            layer_type="bottleneck", out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, d_model=64, encoder_layers=2,
                        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                        encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=20, dropout=0.0,
                        id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    model = DetrForObjectDetection(config)
    live_batch_norm(model.model.backbone.model)
    for param in model.parameters():
        param.requires_grad_(True)
    train_x, train_t = load_split("train", processor)
    val_x, val_t = load_split("val", processor, limit=100)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    model.train()
    start, step = time.time(), 0
    while time.time() - start < args.minutes * 60:
        order = torch.randperm(len(train_x))
        for i in range(0, len(order) - args.batch + 1, args.batch):
            idx = order[i:i + args.batch]
            out = model(pixel_values=train_x[idx], labels=[train_t[k] for k in idx])
            optimiser.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimiser.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step} ({(time.time() - start) / 60:.1f} min): loss {out.loss.item():.3f}", flush=True)
            if time.time() - start > args.minutes * 60:
                break
    model.eval()
    print(f"{step} steps, {step * args.batch / len(train_x):.1f} epochs; val recall@0.5 IoU, score > 0.5: "
          f"{val_recall(model, val_x, val_t):.3f}")
    # Fold the live statistics back into DETR's frozen layers (same tensor names).
    fresh = DetrForObjectDetection(config)
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    fresh.load_state_dict(state)
    fresh.save_pretrained(args.out)
    processor.save_pretrained(args.out)


if __name__ == "__main__":
    main()
