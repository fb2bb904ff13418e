"""Hostile image files: a few hundred bytes that would cost gigabytes to preprocess naively."""

from __future__ import annotations

import resource

import numpy as np
from PIL import Image

import embedstore
from embedstore.backbones import Preprocess
from tests.conftest import write_class_images


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reference(p: Preprocess, im: Image.Image) -> np.ndarray:
    """The obvious way: scale the short side to ``resize_px`` whole, then crop the centre."""
    w, h = im.size
    s = p.resize_px / min(w, h)
    nw, nh = max(p.crop_px, round(w * s)), max(p.crop_px, round(h * s))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - p.crop_px) // 2, (nh - p.crop_px) // 2
    im = im.crop((left, top, left + p.crop_px, top + p.crop_px))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def test_a_strip_is_cropped_before_it_is_scaled_and_matches_the_obvious_way():
    """A 6 x 1500 px strip is scaled whole to 224 x 56000 by the obvious way; the safe way
    resamples only the centre box and gives the same picture."""
    rng = np.random.default_rng(0)
    # smooth content (a slow gradient with noise), so both ways see the same thing
    ramp = np.linspace(0, 255, 1500)[:, None, None] * np.ones((1, 6, 3))
    strip = np.clip(ramp + rng.normal(0, 4, ramp.shape), 0, 255).astype(np.uint8)
    p = Preprocess()
    for im in (Image.fromarray(strip), Image.fromarray(strip.transpose(1, 0, 2))):
        got, want = p(im).astype(float), _reference(p, im).astype(float)
        assert got.shape == want.shape == (3, 224, 224)
        assert np.abs(got - want).mean() < 2.0, np.abs(got - want).mean()


def test_an_ordinary_photo_is_preprocessed_exactly_as_before():
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    p = Preprocess()
    assert np.array_equal(p(im), _reference(p, im))


def test_ingest_of_a_1x60000_png_keeps_memory_flat(tmp_path):
    """The file that took 104 s and ~5 GB: ingested beside ordinary photos, with memory flat."""
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=2, size=64)
    Image.new("RGB", (1, 60000)).save(imgs / "class_0" / "strip.png")
    Image.new("RGB", (60000, 1)).save(imgs / "class_1" / "wide.png")
    assert (imgs / "class_0" / "strip.png").stat().st_size < 2000
    before = _peak_rss_mib()
    summary = embedstore.ingest(imgs, tmp_path / "store", workers=0, progress=False)
    grown = _peak_rss_mib() - before
    assert summary["new_images"] == 6 and summary["skipped"] == 0, summary
    assert grown < 500, f"peak memory grew {grown:.0f} MiB"
