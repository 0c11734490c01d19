"""Fine-tuning and linear probing in the trainer, on the tiny model and generated clips: the
AudioMAE recipe wired through the config, loss choice, balanced sampling, eval outputs, and an
accuracy far above chance on two easy classes."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import avmae
from avmae.config import ConfigError, load_config
from avmae.data import save_audio
from avmae.train import Trainer, list_checkpoints
from avmae.train.finetune import FinetuneTask, classification_loss, classifier_head, resolve_loss
from avmae.train.logging_utils import read_metrics
from avmae.train.samplers import BalancedSampler

SR = 16000


pytestmark = pytest.mark.usefixtures("one_thread")


def write_clips(root, per_class, *, seconds=0.7, seed=0, multilabel=False):
    """Two easy classes: a low tone (200-400 Hz) and high band noise (3-6 kHz); with
    ``multilabel`` a third of the clips carry both. -> (train.json, eval.json, labels.csv)."""
    g = torch.Generator().manual_seed(seed)
    n = int(SR * seconds)
    t = torch.arange(n) / SR
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("index,mid,display_name\n0,/t/low,Low tone\n1,/t/high,High noise\n")

    def low():
        f = 200 + 200 * float(torch.rand(1, generator=g))
        return torch.sin(2 * math.pi * f * t)

    def high():
        spec = torch.fft.rfft(torch.randn(n, generator=g))
        freqs = torch.fft.rfftfreq(n, 1 / SR)
        return torch.fft.irfft(spec * ((freqs > 3000) & (freqs < 6000)), n)

    out = []
    for split, count in per_class.items():
        items = []
        for k in range(count * 2):
            cls = k % 2
            both = multilabel and k % 3 == 0
            wave = (low() if cls == 0 else high()) + (high() if both and cls == 0 else low() if both else 0)
            wave = 0.5 * wave / wave.abs().max() * (0.3 + 0.7 * float(torch.rand(1, generator=g)))
            rel = f"audio/{split}_{k:03d}.wav"
            save_audio(root / rel, wave.unsqueeze(0), SR)
            labels = "/t/low,/t/high" if both else ("/t/low" if cls == 0 else "/t/high")
            items.append({"wav": rel, "labels": labels})
        (root / f"{split}.json").write_text(json.dumps({"data": items}))
        out.append(root / f"{split}.json")
    return out[0], out[1], root / "labels.csv"


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("easy"), {"train": 8, "eval": 5})


def ft_config(data, out, *extra, task="finetune"):
    train, evals, labels = data
    return load_config(
        [],
        [
            f"task={task}",
            "model.name=audiomae_tiny_cls",
            f"data.train_manifest={train}",
            f"data.eval_manifest={evals}",
            f"data.label_csv={labels}",
            "data.target_length=64",
            "data.num_mel_bins=64",
            "data.num_workers=0",
            "train.batch_size=4",
            "train.cpu=true",
            "train.mixed_precision=no",
            "schedule.epochs=1",
            "schedule.warmup_epochs=0",
            "logging.every_n_steps=1",
            "logging.progress=false",
            "logging.tensorboard=false",
            "checkpoint.every_n_epochs=0",
            "checkpoint.keep_last=1",
            f"output_dir={out}",
            *extra,
        ],
    )


def pretrain_tiny(data, out):
    """One epoch of pretraining the tiny AudioMAE on ``data`` into ``out`` (an initial model to fine-tune)."""
    Trainer(
        ft_config(data, out, "task=pretrain", "model.name=audiomae_tiny", "optim.lr=1e-3", "eval.every_n_epochs=-1")
    ).fit()


def test_two_easy_classes_far_above_chance(easy, tmp_path):
    cfg = ft_config(
        easy,
        tmp_path / "ft",
        "optim.lr=2e-3",
        "optim.weight_decay=0.05",
        "optim.betas=[0.9,0.999]",
        "schedule.epochs=8",
        "schedule.warmup_epochs=1",
        "model.params.drop_path=0.0",
        "eval.every_n_epochs=4",
        "data.cache=true",
    )
    result = Trainer(cfg).fit()
    assert result.eval["acc"] >= 0.9, result.eval  # chance is 0.5
    assert result.last_loss < result.first_loss


def test_recipe_pieces_run_and_outputs_are_written(easy, tmp_path):
    """Pretraining checkpoint -> fine-tuning with the AudioMAE recipe switched on."""
    pretrain_tiny(easy, tmp_path / "pre")
    cfg = ft_config(
        easy,
        tmp_path / "ft",
        f"checkpoint.init_from={tmp_path / 'pre'}",
        "optim.layer_decay=0.75",
        "optim.lr=1e-3",
        "model.params.drop_path=0.1",
        "masking.mask_t_prob=0.2",
        "masking.mask_f_prob=0.2",
        "data.augment.freqm=8",
        "data.augment.timem=16",
        "data.augment.mixup=0.5",
        "data.augment.gain=true",
        "data.augment.roll=true",
        "train.label_smoothing=0.1",
        "schedule.epochs=2",
        "eval.every_n_epochs=1",
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.task, FinetuneTask)
    result = trainer.fit()
    assert result.steps == 8 and set(result.eval) >= {"loss", "acc", "acc5", "best_acc"}
    assert trainer.task.loss == "ce" and not trainer.task.multilabel
    records = read_metrics(tmp_path / "ft" / "metrics.jsonl", prefix="eval/")
    assert len(records) == 2 and records[-1]["eval/best_acc"] == max(r["eval/acc"] for r in records)
    last = json.loads((tmp_path / "ft" / "eval" / "per_class_last.json").read_text())
    assert last["metric"] == "acc" and [c["name"] for c in last["classes"]] == ["Low tone", "High noise"]
    assert sum(c["count"] for c in last["classes"]) == 10  # every eval clip once
    assert (tmp_path / "ft" / "eval" / "per_class_best.json").is_file()
    # the encoder came from the pretraining run, the head is new and trained
    pre = load_file(str(list_checkpoints(tmp_path / "pre")[-1] / "model.safetensors"))
    ft = load_file(str(list_checkpoints(tmp_path / "ft")[-1] / "model.safetensors"))
    assert ft["head.weight"].shape == (2, 64)
    assert not torch.equal(ft["blocks.1.mlp.fc1.weight"], pre["blocks.1.mlp.fc1.weight"])
    # layer-wise lr decay: two groups per layer at 0.75 ** (3 - layer)
    groups = trainer.task.param_groups(trainer.task.build_model(trainer._build_datasets()[0]))
    scales = {g["group"]: g["lr_scale"] for g in groups}
    assert scales["layer_0_no_decay"] == pytest.approx(0.75**3) and scales["layer_3_decay"] == 1.0


def test_linear_probe_trains_only_the_head(easy, tmp_path):
    pretrain_tiny(easy, tmp_path / "pre")
    cfg = ft_config(
        easy,
        tmp_path / "lp",
        f"checkpoint.init_from={tmp_path / 'pre'}",
        "optim.lr=1e-2",
        "optim.weight_decay=0",
        "schedule.epochs=2",
        task="linprobe",
    )
    result = Trainer(cfg).fit()
    assert "acc" in result.eval
    pre = load_file(str(list_checkpoints(tmp_path / "pre")[-1] / "model.safetensors"))
    lp = load_file(str(list_checkpoints(tmp_path / "lp")[-1] / "model.safetensors"))
    for k in ("blocks.0.attn.qkv.weight", "blocks.1.norm2.weight", "modalities.audio.patch_embed.proj.weight"):
        assert torch.equal(lp[k], pre[k]), k
    assert torch.equal(lp["fc_norm.weight"], torch.ones(64)) and torch.equal(lp["fc_norm.bias"], torch.zeros(64))
    assert lp["head.weight"].abs().max() > 1e-3  # moved from its 2e-5-std init


@pytest.mark.parametrize(
    "name, head", [("audiomae_tiny_cls", "head"), ("ast_tiny", "head"), ("cav_mae_tiny_ft", "mlp_head")]
)
def test_every_classifier_names_its_head(name, head):
    """``classifier_head`` (what the linear probe trains) is the module mapping the pooled features to the logits."""
    model = avmae.create_model(name, num_classes=3, target_length=64).eval()
    found, module = classifier_head(model)
    assert found == head and module is getattr(model, head) and sum(p.numel() for p in module.parameters()) > 0
    inputs = {m: torch.randn(2, *mod.input_shape) for m, mod in model.modalities.items()}
    with torch.no_grad():
        torch.testing.assert_close(module(model.forward_features(inputs)), model(inputs))


def test_classifier_head_errors():
    with pytest.raises(AttributeError, match="does not name its classifier head"):
        classifier_head(torch.nn.Linear(2, 2))
    model = avmae.create_model("audiomae_tiny_cls", num_classes=2)
    model.head_name = "classifier"
    with pytest.raises(AttributeError, match="'classifier', which is not one of its submodules"):
        classifier_head(model)


def test_multilabel_data_uses_bce_and_map(tmp_path):
    data = write_clips(tmp_path / "ml", {"train": 4, "eval": 3}, multilabel=True)
    trainer = Trainer(ft_config(data, tmp_path / "run", "optim.lr=1e-3"))
    result = trainer.fit()
    assert trainer.task.multilabel and trainer.task.loss == "bce"
    assert {"mAP", "mAUC", "best_mAP"} <= set(result.eval)
    last = json.loads((tmp_path / "run" / "eval" / "per_class_last.json").read_text())
    assert last["metric"] == "mAP" and all(c["ap"] is not None for c in last["classes"])


def test_loss_choice():
    assert (
        resolve_loss("auto", True) == "bce"
        and resolve_loss("auto", False) == "ce"
        and resolve_loss("bce", False) == "bce"
    )
    with pytest.raises(ConfigError, match="train.loss"):
        resolve_loss("focal", False)
    logits = torch.randn(5, 3)
    soft = torch.softmax(torch.randn(5, 3), 1)
    ref = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert classification_loss(logits, soft, "ce") == pytest.approx(ref.item(), abs=1e-6)
    smooth = soft * 0.9 + 0.1 / 3
    ref = -(smooth * logits.log_softmax(1)).sum(1).mean()
    assert classification_loss(logits, soft, "ce", 0.1) == pytest.approx(ref.item(), abs=1e-6)
    hot = (torch.rand(5, 3) > 0.5).float()
    assert classification_loss(logits, hot, "bce") == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, hot).item()
    )


def test_balanced_sampling_in_the_trainer(easy, tmp_path):
    cfg = ft_config(
        easy,
        tmp_path / "bal",
        "data.balanced=true",
        "data.epoch_len=10",
        "data.replacement=true",
        "optim.lr=1e-3",
        "eval.every_n_epochs=-1",
    )
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert result.plan.train_items == 10 and result.plan.steps_per_epoch == 2  # 10 draws -> 2 batches of 4
    sampler = trainer.task.build_sampler(trainer._build_datasets()[0], result.plan)
    assert isinstance(sampler, BalancedSampler) and sampler.items_per_epoch == 8
    with pytest.raises(ConfigError, match="data.epoch_len"):
        ft_config(easy, tmp_path / "x", "data.epoch_len=10")  # without data.balanced
    with pytest.raises(ConfigError, match="train.label_smoothing"):
        ft_config(easy, tmp_path / "x", "train.label_smoothing=1.5")


@pytest.mark.parametrize("name, task", [("demo_finetune", "finetune"), ("demo_linprobe", "linprobe")])
def test_demo_configs_load(name, task):
    cfg = load_config([f"configs/{name}.yaml"])
    assert cfg.task == task and cfg.model.name == "audiomae_demo_cls" and cfg.data.train_manifest is None


def test_demo_chain_pretrain_then_finetune_linprobe_and_ast(tmp_path):
    """The README's demo commands, each for two steps on a small copy of the demo data: pretraining,
    then fine-tuning and linear probing initialised from it, and AST from scratch."""
    from avmae.data import ensure_demo_audio

    demo = ensure_demo_audio(tmp_path / "demo", num_train_per_class=1, num_eval_per_class=1, seconds=1.0)
    data = [
        f"data.train_manifest={demo / 'train.json'}",
        f"data.eval_manifest={demo / 'eval.json'}",
        f"data.label_csv={demo / 'class_labels_indices.csv'}",
        "train.batch_size=3",
        "schedule.max_steps=2",
        "logging.progress=false",
        "logging.tensorboard=false",
        "train.cpu=true",
    ]
    pre = Trainer(load_config(["configs/demo_audio.yaml"], [*data, f"output_dir={tmp_path / 'pre'}"])).fit()
    assert pre.steps == 2 and list_checkpoints(tmp_path / "pre")
    encoder = {
        k: v
        for k, v in load_file(str(list_checkpoints(tmp_path / "pre")[-1] / "model.safetensors")).items()
        if k.startswith("blocks.0.")
    }

    for name in ("demo_finetune", "demo_linprobe"):
        out = tmp_path / name
        result = Trainer(
            load_config(
                [f"configs/{name}.yaml"], [*data, f"checkpoint.init_from={tmp_path / 'pre'}", f"output_dir={out}"]
            )
        ).fit()
        assert result.steps == 2 and 0.0 <= result.eval["acc"] <= 1.0
        tuned = load_file(str(list_checkpoints(out)[-1] / "model.safetensors"))
        moved = [k for k, v in encoder.items() if not torch.equal(tuned[k], v)]
        # the linear probe keeps the pretrained encoder as loaded; fine-tuning moves it
        assert (
            (moved == [])
            if name == "demo_linprobe"
            else (moved != [] and all(torch.allclose(tuned[k], encoder[k], atol=0.05) for k in encoder))
        )

    ast = Trainer(load_config(["configs/demo_ast.yaml"], [*data, f"output_dir={tmp_path / 'ast'}"]))
    result = ast.fit()
    weights = load_file(str(list_checkpoints(tmp_path / "ast")[-1] / "model.safetensors"))
    assert (
        weights["encoder.pos_embed"].shape == (1, 8 * 16 + 2, 192)
        and len({k.split(".")[2] for k in weights if k.startswith("encoder.blocks.")}) == 4
    )
    assert result.steps == 2 and 0.0 <= result.eval["acc"] <= 1.0


def test_init_from_an_official_audiomae_checkpoint(easy, tmp_path):
    """An official-layout pretraining .pth ({"model": state_dict}) initialises the classifier's encoder."""
    import avmae
    from avmae.checkpoint import to_audiomae_official

    pre = avmae.create_model("audiomae_tiny", target_length=64, num_mel_bins=64)
    official = to_audiomae_official(pre)
    torch.save({"model": official, "epoch": 20}, tmp_path / "checkpoint-20.pth")
    cfg = ft_config(
        easy,
        tmp_path / "ft",
        f"checkpoint.init_from={tmp_path / 'checkpoint-20.pth'}",
        "schedule.max_steps=1",
        "eval.every_n_epochs=-1",
    )
    trainer = Trainer(cfg)
    model = trainer.task.build_model(trainer._build_datasets()[0])
    assert torch.equal(model.state_dict()["blocks.1.attn.qkv.weight"], official["blocks.1.attn.qkv.weight"])
    assert model.head.weight.shape == (2, 64) and model.head.weight.std() < 1e-3  # fresh head
    assert trainer.fit().steps == 1


def test_frozen_then_unfrozen_trains_the_head_first_then_everything(easy, tmp_path):
    pretrain_tiny(easy, tmp_path / "pre")
    pre = load_file(str(list_checkpoints(tmp_path / "pre")[-1] / "model.safetensors"))
    enc = ("blocks.0.attn.qkv.weight", "blocks.1.norm2.weight", "modalities.audio.patch_embed.proj.weight")
    runs = {}
    for epochs in (1, 3):  # 4 steps an epoch; the encoder frozen for the first
        out = tmp_path / f"ft{epochs}"
        trainer = Trainer(
            ft_config(
                easy,
                out,
                f"checkpoint.init_from={tmp_path / 'pre'}",
                "optim.lr=1e-2",
                f"schedule.epochs={epochs}",
                "task_params.freeze_epochs=1",
            )
        )
        trainer.fit()
        runs[epochs] = load_file(str(list_checkpoints(out)[-1] / "model.safetensors"))
        assert runs[epochs]["head.weight"].abs().max() > 1e-3  # the head trained from the first step
    for k in enc:
        assert torch.equal(runs[1][k], pre[k]), k  # weight decay at lr 0 moves nothing either
        assert not torch.equal(runs[3][k], pre[k]), k
    groups = trainer.task.param_groups(trainer.task.build_model(trainer._build_datasets()[0]))
    frozen = [g for g in groups if g.get("frozen_epochs")]
    assert frozen and all(g["frozen_epochs"] == 1.0 for g in frozen)
    fresh = {id(p) for g in groups if not g.get("frozen_epochs") for p in g["params"]}
    assert len(fresh) == 4  # head and fc_norm, weights and biases


def test_freeze_epochs_lr_ramp_and_errors(easy, tmp_path):
    from avmae.train.optim import set_lr

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW(
        [{"params": [p], "lr_scale": 0.5, "frozen_epochs": 2.0}, {"params": [torch.nn.Parameter(torch.zeros(1))]}]
    )
    lrs = []
    for epoch in (0.0, 1.9, 2.0, 2.5, 3.0, 7.0):
        set_lr(opt, 1e-3, epoch)
        lrs.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
    assert [a for a, _ in lrs] == pytest.approx([0, 0, 0, 2.5e-4, 5e-4, 5e-4])
    assert all(b == 1e-3 for _, b in lrs)
    with pytest.raises(ConfigError, match="freeze_epochs"):
        ft_config(easy, tmp_path / "x", "task_params.freeze_epochs=-1")
    with pytest.raises(ConfigError, match="freeze_epochs"):
        ft_config(easy, tmp_path / "x", "task_params.freeze_epochs=1", task="linprobe")
