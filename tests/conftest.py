"""Fixtures that build real things small: image files, tiny HF models, real Lance stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLOWERS = Path(
    os.environ.get(
        "FLOWERS12", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flowers12"
    )
).resolve()


def write_class_images(
    root: Path,
    n_classes: int = 3,
    per_class: int = 4,
    size: int = 48,
    seed: int = 0,
    fmt: str = "JPEG",
) -> list[Path]:
    """Real image files, one folder per class; each class has its own colour and stripe pattern."""
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(n_classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.array(
            [(c * 97) % 256, (c * 53 + 80) % 256, (c * 31 + 160) % 256], dtype=np.float32
        )
        for i in range(per_class):
            a = np.tile(base, (size, size, 1))
            a[:, :: (c + 2)] *= 0.5  # class-specific stripes
            a += rng.normal(0, 12, a.shape)
            ext = ".jpg" if fmt == "JPEG" else ".png"
            p = d / f"img_{i}{ext}"
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(p, fmt)
            paths.append(p)
    return paths


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """ONNX exports (``runtime="auto"`` on the CPU exports each backbone once) go to a folder
    of this test session, not the user's ~/.cache/embedstore."""
    before = os.environ.get("EMBEDSTORE_CACHE")
    path = tmp_path_factory.mktemp("embedstore-cache")
    os.environ["EMBEDSTORE_CACHE"] = str(path)
    yield path / "onnx"
    if before is None:
        os.environ.pop("EMBEDSTORE_CACHE", None)
    else:
        os.environ["EMBEDSTORE_CACHE"] = before


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors and indexes: intra-op and OpenMP threads only add start-up and spinning
    (10x slower on a busy 2-core machine). Use with ``pytestmark = pytest.mark.usefixtures``."""
    import torch

    from embedstore.search._search import import_faiss

    faiss = import_faiss()
    torch_before, faiss_before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(torch_before)
    faiss.omp_set_num_threads(faiss_before)


# The towers of the tiny two-tower models (CLIP, SigLIP, SigLIP 2) the tests build from configs.
TINY_TEXT = dict(
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    vocab_size=100,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
TINY_VISION = dict(
    hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48, patch_size=8
)


@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory) -> Path:
    """A tiny random DINOv2 saved with save_pretrained, with its processor config."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    d = tmp_path_factory.mktemp("models") / "tiny-dino"
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=8,
        image_size=32,
    )
    torch.manual_seed(0)
    Dinov2Model(cfg).save_pretrained(d)
    BitImageProcessor(
        size={"shortest_edge": 36},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random CLIP (vision + text) saved with save_pretrained, no processor config."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    d = tmp_path_factory.mktemp("models") / "tiny-clip"
    cfg = CLIPConfig(
        text_config=TINY_TEXT,
        vision_config={**TINY_VISION, "image_size": 32},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    return d


def tiny_clip_tokenizer():
    """A real ``CLIPTokenizer`` over a tiny byte-level BPE vocabulary laid out as OpenAI's: the
    256 byte symbols, each again with ``</w>``, a few merges, then ``<|startoftext|>`` and
    ``<|endoftext|>`` last (so the end-of-text token has the highest id, as open_clip's pooling
    expects)."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    merges = [("t", "h"), ("th", "e</w>"), ("o", "f</w>"), ("p", "h")]
    words = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_siglip_tokenizer():
    """A word-level tokenizer laid out as SigLIP's (``</s>`` appended, and used as padding)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", *"a an photo of the flower daisy rose tulip iris".split()]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def tiny_clip_text(tmp_path_factory) -> Path:
    """A tiny random CLIP with its tokenizer (a real CLIPTokenizer), saved with save_pretrained:
    both towers usable, the text one through ``embedstore.backbones.text_tower``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    d = tmp_path_factory.mktemp("models") / "tiny-clip-text"
    tok = tiny_clip_tokenizer()
    text = {**TINY_TEXT, "vocab_size": len(tok), "max_position_embeddings": 24}
    text.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    text["pad_token_id"] = tok.pad_token_id
    cfg = CLIPConfig(
        text_config=text, vision_config={**TINY_VISION, "image_size": 32}, projection_dim=12
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_siglip_text(tmp_path_factory) -> Path:
    """A tiny random SigLIP (its text head projecting into the image tower's 24-d output) with
    a tokenizer laid out as SigLIP's, saved with save_pretrained."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    d = tmp_path_factory.mktemp("models") / "tiny-siglip-text"
    tok = tiny_siglip_tokenizer()
    text = {**TINY_TEXT, "vocab_size": len(tok), "max_position_embeddings": 16}
    text.update(projection_size=TINY_VISION["hidden_size"], eos_token_id=1, pad_token_id=1)
    cfg = SiglipConfig(text_config=text, vision_config={**TINY_VISION, "image_size": 32})
    torch.manual_seed(0)
    SiglipModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory, tiny_dino):
    """4 classes x 12 JPEG files embedded with a tiny DINOv2, 3 folds and a held-out part
    (read only: tests write their runs elsewhere)."""
    import embedstore

    root = tmp_path_factory.mktemp("photo-store")
    write_class_images(root / "imgs", n_classes=4, per_class=12, size=40)
    embedstore.ingest(
        root / "imgs", root / "s", backbones=[str(tiny_dino)], workers=0, progress=False
    )
    embedstore.split(root / "s", folds=3, holdout=0.25, seed=0)
    return root / "s"


@pytest.fixture(scope="session")
def flowers() -> Path:
    if not (FLOWERS / "train").is_dir():
        pytest.skip(f"real photos not found at {FLOWERS}")
    return FLOWERS


@pytest.fixture(scope="session")
def flowers_store(flowers, tmp_path_factory) -> Path:
    """flowers12 (train + test, 960 real photos) embedded once with efficientnet-lite0."""
    import embedstore

    path = tmp_path_factory.mktemp("stores") / "flowers"
    summary = embedstore.ingest(flowers, path, batch_size=32, workers=1, progress=False)
    # flowers12 holds one byte-identical pair (train/iris/image_0422.jpg = image_0469.jpg)
    assert summary["new_images"] == 959 and summary["duplicates"] == 1, summary
    return path


def make_synthetic_store(
    path: Path,
    *,
    n_classes: int = 6,
    per_class: int = 40,
    dim: int = 16,
    sep: float = 4.0,
    seed: int = 0,
    extra: dict | None = None,
    labels=None,
    X=None,
):
    """A real store whose embedding column holds separable Gaussian clusters (no images needed).

    Rows are written through the store API exactly as ingest writes them.
    """
    import pyarrow as pa

    import embedstore

    rng = np.random.default_rng(seed)
    if X is None:
        centers = rng.normal(0, 1, (n_classes, dim)) * sep
        y = np.repeat(np.arange(n_classes), per_class)
        X = (centers[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32)
        labels = [f"species_{c}" for c in y] if labels is None else labels
    n, dim = X.shape
    st = embedstore.connect(path)
    field = st.meta.embedding_field(
        "emb_synthetic", dim, "float32", {"backbone": "synthetic", "source": "test", "dim": dim}
    )
    cols = {
        "id": pa.array([f"{i:064x}" for i in range(n)]),
        "path": pa.array([f"img_{i}.jpg" for i in range(n)]),
        "label": pa.array(labels, pa.string()),
    }
    for k, v in (extra or {}).items():
        cols[k] = pa.array(v)
    arrays = list(cols.values()) + [pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), dim)]
    fields = [pa.field(k, a.type) for k, a in cols.items()] + [field]
    st.insert_images(pa.Table.from_arrays(arrays, schema=pa.schema(fields)))
    return st
