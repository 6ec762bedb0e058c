"""Write the built-in synthetic dataset's validation images as PNG files, to try `segdeploy predict` and a
deployed bundle's `predict.py` on image files without downloading anything (`make demo` uses it).

    python examples/synthetic_images.py OUT_DIR [--size 128] [--count 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from segdeploy.core.config import DataConfig
from segdeploy.data.registry import build_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--count", type=int, default=8)
    args = parser.parse_args()
    dataset = build_dataset(DataConfig(dataset="synthetic", size=args.size), "val")
    args.output.mkdir(parents=True, exist_ok=True)
    for index in range(min(args.count, len(dataset))):
        Image.fromarray(dataset.images[index]).save(args.output / f"synthetic_{index:03d}.png")
    print(f"wrote {min(args.count, len(dataset))} images to {args.output}")


if __name__ == "__main__":
    main()
