"""bench/ultralytics_peer.py: the fold view the peer trains on (no Ultralytics needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bench_scripts import load_bench
from pair_factory import pair_dataset
from PIL import Image

from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.pairs import SequencePairs

peer = load_bench("ultralytics_peer")



def test_fold_view_of_pairs_holds_t1_t2_and_mean(tmp_path: Path) -> None:
    ds = LumbarDataset(pair_dataset(tmp_path / "data", 2), classes="study")
    pairs = SequencePairs(ds)
    train_idx, val_idx = [0, 1], [2, 3]
    yaml = peer.write_fold_view(ds, train_idx, val_idx, tmp_path / "view", pairs)
    assert "train: train.txt" in yaml.read_text()
    listed = (tmp_path / "view" / "val.txt").read_text().split()
    assert listed == [str(peer.view_image(ds, i, tmp_path / "view", True)) for i in val_idx]
    for i in train_idx + val_idx:
        rgb = np.asarray(Image.open(peer.view_image(ds, i, tmp_path / "view", True)))
        pair = pairs[i].image.astype(np.float32)
        assert rgb.shape == (*pair.shape[1:], 3)
        np.testing.assert_array_equal(rgb[..., :2].transpose(2, 0, 1), pair)
        np.testing.assert_allclose(rgb[..., 2], pair.mean(0), atol=0.5)
        labels = (tmp_path / "view" / "labels" / f"{i:05d}.txt").read_text().split("\n")
        assert len([x for x in labels if x]) == len(ds.records[i].labels)


def test_fold_view_of_single_slices_links_the_images(tmp_path: Path) -> None:
    ds = LumbarDataset(pair_dataset(tmp_path / "data", 2), classes="study")
    peer.write_fold_view(ds, [0, 1], [2], tmp_path / "view")
    link = peer.view_image(ds, 2, tmp_path / "view", False)
    assert link.is_symlink() and link.resolve() == ds.records[2].image_path.resolve()
