"""The HEAR API module and the X-ARES-style encoder against the model's own forward on the same fbank."""

import pytest
import torch

import avmae
import avmae.hear as hear
from avmae.data import NORM_STATS, AudioFrontend
from avmae.hear import AudioEmbedder, XaresEncoder

T = 64
MEAN, STD = NORM_STATS["esc50"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name, **kw):
    torch.manual_seed(0)
    model = avmae.create_model(name, target_length=T, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _fe(length):
    return AudioFrontend(target_length=length, mean=MEAN, std=STD)


def _rows(tokens, t):
    """Patch tokens [B, t*8, D] (time-major) -> per time row means [B, t, D]."""
    return tokens.reshape(tokens.shape[0], t, -1, tokens.shape[-1]).mean(2)


@pytest.fixture(scope="module")
def audio():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 24000, generator=g) * 0.1  # 1.5 s: 148 frames, windows of 64 + 64 + 20 real frames


def test_timestamp_and_scene_embeddings_are_the_encoder_outputs(audio):
    mae = _model("audiomae_tiny")
    emb = AudioEmbedder(mae, _fe(T))
    got, ts = hear.get_timestamp_embeddings(audio, emb)
    assert got.shape == (2, 10, 64) and ts.shape == (2, 10)
    assert ts[0, :3].tolist() == [87.5, 247.5, 407.5]
    fb = AudioFrontend(target_length=None, mean=MEAN, std=STD)
    clips = torch.stack([fb.compute_fbank(a.unsqueeze(0)) for a in audio])  # [2, 148, 128], un-normalised
    want = []
    for start, length in ((0, 64), (64, 64), (128, 32)):  # the last window: 20 real frames run at 32
        win = clips[:, start : start + length]
        win = torch.nn.functional.pad(win, (0, 0, 0, length - win.shape[1]))  # zeros in log-mel, as the frontend pads
        with torch.no_grad():
            rows = _rows(mae.forward_features({"audio": fb.normalize(win).unsqueeze(1)})[:, 1:], length // 16)
        want.append(rows[:, : -(-min(64, 148 - start) // 16)])
    want = torch.cat(want, 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hear.get_scene_embeddings(audio, emb), want.mean(1), atol=1e-5, rtol=1e-5)
    assert emb.sample_rate == 16000 and emb.scene_embedding_size == emb.timestamp_embedding_size == 64


def test_classifier_scene_embedding_is_its_pooled_features():
    clf = _model("audiomae_tiny_cls", num_classes=3)
    emb = AudioEmbedder(clf, _fe(T))
    audio = torch.randn(3, 8000) * 0.1  # 0.5 s: 48 frames, one window run at its own length
    x = torch.stack([_fe(48)(a.unsqueeze(0)) for a in audio])
    with torch.no_grad():
        pooled = clf.forward_features({"audio": x})
        rows = _rows(clf.forward_tokens({"audio": x}, mask=False)[:, 1:], 3)
    torch.testing.assert_close(emb.scene_embeddings(audio), pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb.timestamp_embeddings(audio)[0], clf.fc_norm(rows), atol=1e-5, rtol=1e-5)


def test_hear_load_model_and_xares_encoder(tmp_path, audio):
    mae = _model("audiomae_tiny")
    path = avmae.save_checkpoint(
        mae, tmp_path / "model.safetensors", config={"data": {"target_length": T, "norm": "esc50"}}
    )
    model = hear.load_model(str(path))
    assert isinstance(model, torch.nn.Module) and model.frontend.mean == pytest.approx(MEAN)
    direct = AudioEmbedder(mae, _fe(T)).timestamp_embeddings(audio)[0]
    torch.testing.assert_close(hear.get_timestamp_embeddings(audio, model)[0], direct)
    enc = XaresEncoder(str(path))
    assert (enc.sampling_rate, enc.output_dim, enc.hop_size_in_ms) == (16000, 64, 160.0) and enc.device.type == "cpu"
    out = enc(audio)
    assert out.ndim == 3 and torch.equal(out, direct)
    assert enc(audio[0]).shape == (1, 10, 64)
    assert enc(audio[:, ::2], sampling_rate=8000).shape == (2, 10, 64)  # resampled to 16 kHz
    with pytest.raises(ValueError, match="path"):
        hear.load_model()
    assert hear.load_model(model_name="audiomae_tiny", target_length=T).scene_embedding_size == 64
