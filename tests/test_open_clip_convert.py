"""open_clip checkpoints (BioCLIP 2's format) converted into a transformers CLIP folder.

``open_clip_torch`` cannot be imported here (it imports torchvision), so the reference is a small
model written as open_clip writes its ViT CLIP (``open_clip/model.py`` ``CLIP.encode_text`` /
``encode_image``, ``open_clip/transformer.py`` ``ResidualAttentionBlock`` on
``nn.MultiheadAttention``, ``VisionTransformer`` with ``pool_type='tok'``), with the same
parameter names; its state dict is saved as an open_clip checkpoint folder and converted, and the
converted model must give the reference's numbers through embedstore's image backbone and text
tower."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import embedstore
from cli import embedstore_cli
from embedstore.backbones import Preprocess, convert_open_clip, create_backbone, text_tower
from tests.conftest import tiny_clip_tokenizer, write_class_images

pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
TEXTS = ["a photo of the daisy", "the rose", "x"]


class QuickGELU(nn.Module):  # open_clip.transformer.QuickGELU (OpenAI's activation)
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):  # open_clip.transformer.ResidualAttentionBlock
    def __init__(self, width: int, heads: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", act()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )

    def forward(self, x, attn_mask=None):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([Block(width, heads, act) for _ in range(layers)])

    def forward(self, x, attn_mask=None):
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class Visual(nn.Module):  # open_clip.transformer.VisionTransformer, pool_type 'tok'
    def __init__(self, image: int, patch: int, width: int, layers: int, embed: int, act) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, width // 16, act)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed))

    def forward(self, x):
        x = self.conv1(x)  # (B, W, g, g)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, g*g, W)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding  # (B, g*g+1, W)
        x = self.ln_post(self.transformer(self.ln_pre(x)))
        return x[:, 0] @ self.proj  # (B, E)


class OpenClipReference(nn.Module):  # open_clip.model.CLIP
    def __init__(self, cfg: dict, act: type[nn.Module]) -> None:
        super().__init__()
        v, t = cfg["vision_cfg"], cfg["text_cfg"]
        self.visual = Visual(
            v["image_size"], v["patch_size"], v["width"], v["layers"], cfg["embed_dim"], act
        )
        self.transformer = Transformer(t["width"], t["layers"], t["heads"], act)
        self.token_embedding = nn.Embedding(t["vocab_size"], t["width"])
        self.positional_embedding = nn.Parameter(torch.randn(t["context_length"], t["width"]))
        self.ln_final = nn.LayerNorm(t["width"])
        self.text_projection = nn.Parameter(torch.randn(t["width"], cfg["embed_dim"]))
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
        n = t["context_length"]
        self.register_buffer("attn_mask", torch.full((n, n), float("-inf")).triu(1), False)

    def encode_text(self, text):  # (B, n) token ids, padded with 0 as open_clip's tokenizer
        x = self.token_embedding(text) + self.positional_embedding
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def encode_image(self, image):
        return self.visual(image)


def _open_clip_checkpoint(folder: Path, quick_gelu: bool, **extra) -> OpenClipReference:
    tok = tiny_clip_tokenizer()
    vision = {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16}
    text = {"context_length": 20, "vocab_size": len(tok), "width": 24, "heads": 2, "layers": 2}
    cfg = {"embed_dim": 12, "quick_gelu": quick_gelu, "vision_cfg": vision, "text_cfg": text}
    for k, v in extra.items():
        cfg[k.split(".")[0]] = {**cfg.get(k.split(".")[0], {}), k.split(".")[1]: v}
    torch.manual_seed(1)
    ref = OpenClipReference(cfg, QuickGELU if quick_gelu else nn.GELU).eval()
    with torch.no_grad():  # every weight random, layer norms included
        for name, p in ref.named_parameters():
            if name != "logit_scale":
                p.copy_((1.0 if name.endswith("weight") and "ln" in name else 0.0)
                        + 0.3 * torch.randn_like(p))  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": cfg,
                "preprocess_cfg": {"mean": MEAN, "std": STD, "interpolation": "bicubic"},
            }
        )
    )
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              folder / "open_clip_model.safetensors")  # fmt: skip
    return ref


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tokenizer")
    tiny_clip_tokenizer().save_pretrained(d)
    return d


@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quick_gelu"])
def test_converted_open_clip_gives_open_clips_text_and_image_features(
    tmp_path, clip_tokenizer, quick_gelu
):
    ref = _open_clip_checkpoint(tmp_path / "oc", quick_gelu)
    out = convert_open_clip(tmp_path / "oc", tmp_path / "hf", tokenizer=str(clip_tokenizer))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "clip" and cfg["projection_dim"] == 12
    assert cfg["text_config"]["hidden_act"] == ("quick_gelu" if quick_gelu else "gelu")

    # texts: open_clip's tokenizer pads with 0 to the context length and pools the highest id
    tok = tiny_clip_tokenizer()
    ids = torch.zeros(len(TEXTS), 20, dtype=torch.long)
    for i, t in enumerate(TEXTS):
        row = tok(t).input_ids
        ids[i, : len(row)] = torch.tensor(row)
    tower = text_tower(str(out))
    with torch.inference_mode():
        expected = F.normalize(ref.encode_text(ids), dim=-1).numpy()
    np.testing.assert_allclose(tower.encode(TEXTS), expected, atol=1e-5)
    assert tower.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)

    # images: the backbone embeds the pooled CLS, the tower projects it as open_clip's proj
    bb = create_backbone(str(out))
    assert bb.preprocess == Preprocess(32, 32, "shortest", "bicubic", tuple(MEAN), tuple(STD))
    assert bb.describe()["text_tower"] == {"kind": "clip", "source": str(out), "dim": 12}
    files = write_class_images(tmp_path / "imgs", n_classes=2, per_class=2, size=40)
    u8 = torch.from_numpy(np.stack([bb.preprocess(Image.open(f).convert("RGB")) for f in files]))
    with torch.inference_mode():
        expected = F.normalize(ref.encode_image(bb.preprocess.normalize(u8)), dim=-1).numpy()
    np.testing.assert_allclose(tower.project_images(bb.embed(u8).numpy()), expected, atol=1e-5)
    provenance = json.loads((out / "converted_from_open_clip.json").read_text())
    assert provenance["source"] == str(tmp_path / "oc") and len(provenance["weights_sha256"]) == 64


def test_a_model_that_is_not_a_plain_vit_clip_is_refused_by_name(tmp_path, clip_tokenizer):
    _open_clip_checkpoint(tmp_path / "a", False, **{"vision_cfg.attentional_pool": True})
    with pytest.raises(embedstore.BackboneError, match=r"not a plain ViT CLIP \(vision_cfg"):
        convert_open_clip(tmp_path / "a", tmp_path / "out", tokenizer=str(clip_tokenizer))
    _open_clip_checkpoint(tmp_path / "b", False, **{"text_cfg.hf_model_name": "roberta-base"})
    with pytest.raises(embedstore.BackboneError, match="text_cfg.hf_model_name='roberta-base'"):
        convert_open_clip(tmp_path / "b", tmp_path / "out", tokenizer=str(clip_tokenizer))
    # a weight the conversion does not know is an error, not silently dropped
    ref = _open_clip_checkpoint(tmp_path / "c", False)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    sd["visual.extra_head.weight"] = torch.zeros(3)
    save_file(sd, tmp_path / "c" / "open_clip_model.safetensors")
    with pytest.raises(embedstore.BackboneError, match="1 not converted.*extra_head"):
        convert_open_clip(tmp_path / "c", tmp_path / "out", tokenizer=str(clip_tokenizer))
    with pytest.raises(embedstore.BackboneError, match="no open_clip_config.json"):
        convert_open_clip(tmp_path, tmp_path / "out", tokenizer=str(clip_tokenizer))
    assert not (tmp_path / "out").exists()


def test_convert_open_clip_command(tmp_path, clip_tokenizer):
    _open_clip_checkpoint(tmp_path / "oc", False)
    args = ["convert-open-clip", str(tmp_path / "oc"), str(tmp_path / "hf")]
    out = CliRunner().invoke(embedstore_cli, [*args, "--tokenizer", str(clip_tokenizer)])
    assert out.exit_code == 0, out.output
    assert f"use it with `--backbone {tmp_path / 'hf'}`" in out.output
    assert text_tower(str(tmp_path / "hf")).encode(["a rose"]).shape == (1, 12)
    bad = CliRunner().invoke(embedstore_cli, ["convert-open-clip", str(tmp_path), "x"])
    assert bad.exit_code == 2 and "not an open_clip checkpoint folder" in bad.output
