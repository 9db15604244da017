"""Published weights by name (jaxcnn.pretrained), offline: a 127.0.0.1 server started here serves files made
here (torchvision and Keras models with random weights, saved the way the publishers save them), and each test
points the table at that file and its hash. Also: the shipped table and class names against the installed
torchvision/Keras, and the ImageNet eval transform against torchvision's on a JPEG and a PNG written here.
"""

import dataclasses
import hashlib
import http.server
import io
import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn import checkpoint, imagenet, pretrained  # noqa: E402
from jaxcnn.convert import torchvision_to_flax  # noqa: E402
from test_checkpoint import compilation_cache  # noqa: E402,F401  (autouse: one XLA cache for the CLI runs)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ the server


class Server:
    """Serves `files` {url path: bytes}; counts requests; paths in `truncate` send half the body with the
    full Content-Length, then close."""

    def __init__(self):
        self.files, self.requests, self.truncate = {}, [], set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.truncate else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    """Every cache this module may touch lives in tmp_path (never the user's ~/.cache, ~/.keras)."""
    for var, sub in (("JAXCNN_HOME", "jaxcnn"), ("TORCH_HOME", "torch"), ("KERAS_HOME", "keras")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("JAXCNN_WEIGHTS_MIRROR", raising=False)
    return tmp_path


# ------------------------------------------------------------------------- files made like theirs


def torch_resnet18():
    """torchvision resnet18 with random weights, non-trivial BatchNorm statistics and a sharp classifier (so
    that top-5 probabilities are far apart)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.running_mean.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        model.fc.weight.mul_(30.0)
    return model.eval()


@pytest.fixture(scope="module")
def tv_file():
    """(torch model, bytes of torch.save(state_dict), file name with the sha256 prefix as torchvision's)."""
    model = torch_resnet18()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    data = buf.getvalue()
    return model, data, f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def point_table(monkeypatch, entry):
    """The table with `entry` in place of the published one for its model and source."""
    others = [w for w in pretrained.table() if (w.model, w.source) != (entry.model, entry.source)]
    monkeypatch.setattr(pretrained, "table", lambda: (*others, entry))
    return entry


def tv_entry(monkeypatch, tv_file, base_url):
    _, data, name = tv_file
    return point_table(monkeypatch, dataclasses.replace(
        pretrained.find("resnet18"), url=f"{base_url}/models/{name}", hash=hashlib.sha256(data).hexdigest()[:8]))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def torch_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def assert_same_model(model, variables, torch_model, size=64):
    x = np.random.RandomState(0).randn(2, size, size, 3).astype(np.float32)
    assert rel_err(model.apply(variables, x, train=False), torch_logits(torch_model, x)) < 1e-5


# ---------------------------------------------------------------------------- the shipped data


def test_table_equals_installed_torchvision_and_keras():
    import keras  # noqa: F401
    import torchvision.models as tvm
    from keras.src.applications import vgg16, vgg19

    from jaxcnn.models import list_models

    shipped = {(w.model, w.source, w.weights): w for w in pretrained.table()}
    expected = {}
    for name in sorted(set(tvm.list_models(module=tvm)) & set(list_models())):
        enum = tvm.get_model_weights(name)
        for w in enum:
            if w.name.endswith("FEATURES"):
                continue
            expected[(name, "torchvision", w.name)] = w
    keras_files = {"vgg16": vgg16, "vgg19": vgg19}
    assert set(shipped) == set(expected) | {(m, "keras", "imagenet") for m in keras_files}
    assert len(expected) == 32  # 24 models; resnet50/101/152, resnext50/101_32x8d, wide_resnet50/101 have V2
    for key, tw in expected.items():
        ours = shipped[key]
        sha_prefix = re.search(r"-([a-f0-9]{8,})\.pth$", tw.url).group(1)
        metrics = tw.meta["_metrics"]["ImageNet-1K"]
        assert (ours.url, ours.hash_algorithm, ours.hash) == (tw.url, "sha256", sha_prefix), key
        assert (ours.top1, ours.top5, ours.num_params) == (metrics["acc@1"], metrics["acc@5"],
                                                           tw.meta["num_params"]), key
        assert ours.default == (tw is type(tw).DEFAULT), key
        preset = tw.transforms()
        assert (ours.resize, ours.crop) == (preset.resize_size[0], preset.crop_size[0]), key
        if key[0] not in ("googlenet", "inception_v3"):  # those see (x - 0.5) / 0.5: torchvision's transform_input
            assert (list(ours.mean), list(ours.std)) == (list(preset.mean), list(preset.std)), key
    for name, module in keras_files.items():
        ours = shipped[(name, "keras", "imagenet")]
        with_top_hash = re.findall(r'file_hash="([0-9a-f]+)"', Path(module.__file__).read_text())[0]
        assert (ours.url, ours.hash_algorithm, ours.hash) == (module.WEIGHTS_PATH, "md5", with_top_hash)


def test_transform_input_models_see_what_torchvision_feeds_them():
    """googlenet/inception_v3 weights come with transform_input=True: torchvision maps the ImageNet-normalized
    input to (x - 0.5) / 0.5, which is what our table's mean/std produce directly."""
    model = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=False)
    x01 = torch.rand(1, 3, 8, 8)
    normalized = (x01 - torch.tensor(imagenet.MEAN)[:, None, None]) / torch.tensor(imagenet.STD)[:, None, None]
    w = pretrained.find("googlenet")
    ours = (x01 - torch.tensor(w.mean)[:, None, None]) / torch.tensor(w.std)[:, None, None]
    assert torch.allclose(model._transform_input(normalized), ours, atol=1e-6)


def test_class_names_equal_torchvisions():
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert imagenet.class_names() == tuple(categories) and len(categories) == 1000


def test_unknown_model_or_source_lists_what_exists():
    with pytest.raises(pretrained.PretrainedError, match=r"no torchvision weights for 'lenet5'; torchvision "
                                                         r"publishes: alexnet, densenet121, .*wide_resnet50_2$"):
        pretrained.find("lenet5")
    with pytest.raises(pretrained.PretrainedError, match=r"no keras weights for 'resnet18' \(torchvision has "
                                                         r"them\); keras publishes: vgg16, vgg19$"):
        pretrained.find("resnet18", "keras")
    with pytest.raises(pretrained.PretrainedError, match="unknown weights source 'timm': choose one of "
                                                         "torchvision, keras"):
        pretrained.find("resnet18", "timm")
    with pytest.raises(pretrained.PretrainedError, match="there are: IMAGENET1K_V1, IMAGENET1K_V2"):
        pretrained.find("resnet50", weights="V3")


# ------------------------------------------------------------------------------------ downloads


def test_download_progress_conversion_and_cache_hit(server, tv_file, monkeypatch, capfd, caches):
    torch_model, data, name = tv_file
    server.files[f"/models/{name}"] = data
    tv_entry(monkeypatch, tv_file, server.url)
    model, variables = pretrained.load("resnet18")
    err = capfd.readouterr().err
    assert name in err and "100%" in err  # tqdm's bar, to the end
    assert server.requests == [f"/models/{name}"]
    assert sorted(p.name for p in (caches / "jaxcnn" / "downloads").iterdir()) == [name]  # no temporary left
    assert_same_model(model, variables, torch_model)

    model, again = pretrained.load("resnet18")  # the converted copy: no request, no reading of the .pth
    assert len(server.requests) == 1
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(again)))
    _, metadata = checkpoint.load_variables(next((caches / "jaxcnn" / "converted" / "torchvision").iterdir()))
    assert metadata["source"] == f"torchvision:{name}" and metadata["num_classes"] == 1000


def test_torch_cache_is_used_without_a_download(tv_file, monkeypatch, caches):
    torch_model, data, name = tv_file
    tv_entry(monkeypatch, tv_file, closed_port_url())  # a download would fail
    (caches / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (caches / "torch" / "hub" / "checkpoints" / name).write_bytes(data)
    model, variables = pretrained.load("resnet18", progress=False)
    assert_same_model(model, variables, torch_model)
    assert not (caches / "jaxcnn" / "downloads").exists()


def test_mirror_replaces_the_address_and_is_verified(server, tv_file, monkeypatch, caches):
    torch_model, data, name = tv_file
    tv_entry(monkeypatch, tv_file, "https://download.invalid/models")
    monkeypatch.setenv("JAXCNN_WEIGHTS_MIRROR", f"{server.url}/mirror/")
    server.files[f"/mirror/{name}"] = data[:-1] + bytes([data[-1] ^ 1])  # one bit off
    with pytest.raises(pretrained.PretrainedError) as bad:
        pretrained.load("resnet18", progress=False)
    message = str(bad.value)
    actual = hashlib.sha256(server.files[f"/mirror/{name}"]).hexdigest()
    expected = hashlib.sha256(data).hexdigest()[:8]
    assert "\n" not in message and f"sha256 {actual}, expected {expected}" in message
    assert f"{server.url}/mirror/{name}" in message and "removed" in message
    assert list((caches / "jaxcnn" / "downloads").iterdir()) == []
    assert not (caches / "jaxcnn" / "converted").exists()

    server.files[f"/mirror/{name}"] = data
    model, variables = pretrained.load("resnet18", progress=False)
    assert server.requests == [f"/mirror/{name}"] * 2
    assert_same_model(model, variables, torch_model)


def test_truncated_download_leaves_nothing(server, tv_file, monkeypatch, caches):
    _, data, name = tv_file
    server.files[f"/models/{name}"] = data
    server.truncate.add(f"/models/{name}")
    tv_entry(monkeypatch, tv_file, server.url)
    with pytest.raises(pretrained.PretrainedError, match=f"stopped after {len(data) // 2} of {len(data)} bytes"):
        pretrained.load("resnet18", progress=False)
    assert list((caches / "jaxcnn" / "downloads").iterdir()) == []
    assert not (caches / "jaxcnn" / "converted").exists()


def test_unreachable_server_says_where_to_put_the_file(tv_file, monkeypatch, caches):
    _, _, name = tv_file
    base = closed_port_url()
    tv_entry(monkeypatch, tv_file, base)
    with pytest.raises(pretrained.PretrainedError) as bad:
        pretrained.load("resnet18", progress=False)
    message = str(bad.value)
    assert "\n" not in message and message.startswith(f"cannot download {base}/models/{name} (")
    assert f"put it at {caches / 'jaxcnn' / 'downloads' / name}" in message
    assert list((caches / "jaxcnn" / "downloads").iterdir()) == []


def test_keras_h5_download_md5_and_conversion(server, monkeypatch):
    """The Keras path (an .h5 saved the way keras-applications' files are, an md5 per file), on the seeds'
    LeNet-5 to keep it cheap: the published VGG16/VGG19 files are 0.5 GB each."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from jaxcnn.convert.keras import keras_reference

    kmodel = keras_reference("lenet5")
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
    data = buf.getvalue()
    server.files["/k/lenet5_weights.h5"] = data
    point_table(monkeypatch, dataclasses.replace(
        pretrained.find("vgg16", "keras"), model="lenet5", url=f"{server.url}/k/lenet5_weights.h5",
        hash=hashlib.md5(data).hexdigest(), resize=28, crop=28))
    model, variables = pretrained.load("lenet5", "keras", progress=False)
    x = np.random.RandomState(0).rand(2, 28, 28, 1).astype(np.float32)
    assert rel_err(model.apply(variables, x, train=False), kmodel.predict(x, verbose=0)) < 1e-5
    assert server.requests == ["/k/lenet5_weights.h5"]


def test_load_init_reads_pth_and_h5_files(tv_file, tmp_path):
    torch_model, data, _ = tv_file
    (tmp_path / "mine.pth").write_bytes(data)
    variables, metadata = pretrained.load_init(str(tmp_path / "mine.pth"), "resnet18")
    assert metadata["num_classes"] == 1000 and metadata["preprocessing"]["crop"] == 224
    assert_same_model(pretrained.build_model(metadata), variables, torch_model)
    with pytest.raises(pretrained.PretrainedError, match="--init_from .*missing.h5 does not exist"):
        pretrained.load_init(str(tmp_path / "missing.h5"), "vgg16")


def test_densenet_files_with_the_old_key_names_convert(tmp_path):
    """torchvision's published densenet*.pth say 'denselayer1.norm.1.weight' where the model says 'norm1'."""
    torch.manual_seed(0)
    state = torchvision.models.densenet121(weights=None).state_dict()
    old = {re.sub(r"(denselayer\d+\.)(norm|relu|conv)([12])\.", r"\1\2.\3.", k): v for k, v in state.items()}
    assert sum(k != j for k, j in zip(state, old)) == 58 * (2 * 5 + 2)  # 58 layers: 2 BNs x 5 entries, 2 convs x 1
    torch.save(old, tmp_path / "densenet121-old.pth")
    variables, _ = pretrained.load_init(str(tmp_path / "densenet121-old.pth"), "densenet121")
    expected = torchvision_to_flax("densenet121", state)
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)))


# ------------------------------------------------------------------------------- preprocessing


def photo(seed: int, height: int, width: int) -> Image.Image:
    """A smooth random picture (JPEG compresses it without wrecking it) of an odd size."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))
    return Image.fromarray(np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    photo(1, 375, 500).save(d / "landscape.jpg", quality=90)
    photo(2, 333, 257).save(d / "portrait.png")
    return [d / "landscape.jpg", d / "portrait.png"]


def torchvision_transform(resize=256, crop=224):
    from torchvision import transforms as T

    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(imagenet.MEAN, imagenet.STD)])


def test_eval_transform_equals_torchvisions(photos):
    for path in photos:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        for resize, crop in ((256, 224), (342, 299)):
            ref = torchvision_transform(resize, crop)(rgb).numpy().transpose(1, 2, 0)
            ours = imagenet.eval_transform(rgb, resize=resize, crop=crop)
            assert ours.shape == ref.shape == (crop, crop, 3)
            assert np.abs(ours - ref).max() <= 1 / 255, (path, resize)


def test_predict_prints_torchvisions_top5_by_name(server, tv_file, monkeypatch, photos, capsys, tmp_path):
    """`train.predict --model=resnet18 --init_from=torchvision` (downloading the file) and `--init_from=FILE.pth`
    print the classes and probabilities torchvision computes on its own transform of the same files."""
    from train import predict

    torch_model, data, name = tv_file
    server.files[f"/models/{name}"] = data
    tv_entry(monkeypatch, tv_file, server.url)
    expected = []
    for path in photos:
        with Image.open(path) as im:
            x = torchvision_transform()(im.convert("RGB"))[None]
        with torch.no_grad():
            probs = torch.softmax(torch_model(x), -1)[0].numpy()
        top = np.argsort(-probs)[:5]
        expected.append([(imagenet.class_names()[c], float(probs[c])) for c in top])
    assert max(p for _, p in expected[0]) > 0.05  # a sharp enough classifier for the comparison to mean something

    (tmp_path / "mine.pth").write_bytes(data)
    for init_from in ("torchvision", str(tmp_path / "mine.pth")):
        assert predict.main(["--model=resnet18", f"--init_from={init_from}", *map(str, photos)]) == 0
        lines = capsys.readouterr().out.splitlines()
        for i, path in enumerate(photos):
            block = lines[6 * i: 6 * i + 6]
            assert block[0] == str(path)
            got = [re.fullmatch(r"\s+\d\. (.+?)\s+(\d\.\d{4})", line).groups() for line in block[1:]]
            assert [n for n, _ in got] == [n for n, _ in expected[i]], (init_from, path)
            assert np.allclose([float(p) for _, p in got], [p for _, p in expected[i]], atol=1e-4)
    assert server.requests == [f"/models/{name}"]


def test_predict_refuses_a_model_without_weights_in_one_line(photos, capsys):
    from train import predict

    assert predict.main(["--model=lenet5", "--init_from=torchvision", str(photos[0])]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: no torchvision weights for 'lenet5'; torchvision publishes: ")


def test_visualize_pictures_published_weights(tv_file, photos, tmp_path, capsys):
    """`train.visualize --init_from=FILE.pth --model=resnet18 --image=...`: filters are torchvision's conv1
    (64 kernels), feature maps of the photo; no dataset here, so no confusion matrix; without --image, one line."""
    from jaxcnn import viz
    from train import predict, visualize

    torch_model, data, _ = tv_file
    (tmp_path / "mine.pth").write_bytes(data)
    args = ["--model=resnet18", f"--init_from={tmp_path / 'mine.pth'}", f"--workdir={tmp_path / 'pics'}"]
    assert visualize.main([*args, f"--image={photos[0]}", "--layers=conv1,layer1_0"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "pics" / n) for n in ("filters.png",
                                                                                     "feature_maps.png")]
    assert Image.open(tmp_path / "pics" / "filters.png").size == (8 * viz.FILTER_CELL, 8 * viz.FILTER_CELL)
    run = predict.restore_run(str(tmp_path / "mine.pth"), model_name="resnet18")
    _, kernel = viz.first_conv_kernel(run.model, run.variables, run.image_shape)
    assert np.array_equal(kernel, torch_model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
    assert visualize.main(args) == 1
    assert capsys.readouterr().err.strip() == (f"error: --init_from={tmp_path / 'mine.pth'} has no dataset here: "
                                               "give --image=FILE for the feature maps")


# -------------------------------------------------------------------------------------- the CLI


def write_folder(root: Path, n: int = 4) -> Path:
    for split in ("train", "validation"):
        for c, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                photo(10 * c + i + (100 if split == "validation" else 0), 40, 48).save(d / f"{i}.png")
    return root


def run_module(module: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=env)


def test_train_and_eval_cli_start_from_published_weights(tv_file, monkeypatch, tmp_path, caches):
    """train.main --init_from=FILE.pth trains the head on a frozen torchvision backbone; --mode=eval
    --init_from=torchvision (its converted copy already in $JAXCNN_HOME) gives the loss torchvision gives on
    the same batches. Both keep the 1000 classes so that the second run finds the first's compiled eval step
    in the shared XLA cache."""
    import os

    from jaxcnn import data as jdata

    torch_model, data, name = tv_file
    (tmp_path / "resnet18.pth").write_bytes(data)
    dataset = f"folder:{write_folder(tmp_path / 'pets')}"
    common = ["--model=resnet18", f"--dataset={dataset}", "--config.image_size=32", "--batch_size=8",
              "--config.eval_batch_size=8", "--config.num_classes=1000"]
    train = run_module("train.main", *common, f"--init_from={tmp_path / 'resnet18.pth'}", "--num_train_steps=1",
                       "--config.freeze_backbone=True", f"--workdir={tmp_path / 'run'}", env=dict(os.environ))
    assert train.returncode == 0, train.stderr[-2000:]
    state, _, step = checkpoint.restore_variables(tmp_path / "run")
    assert step == 1
    torch_conv1 = torch_model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)
    assert np.array_equal(np.asarray(state["params"]["conv1"]["kernel"]), torch_conv1)  # frozen, from the file
    torch_fc = torch_model.fc.weight.detach().numpy().T
    assert np.asarray(state["params"]["fc"]["kernel"]).shape == torch_fc.shape
    assert not np.array_equal(np.asarray(state["params"]["fc"]["kernel"]), torch_fc)  # the head trained

    # The converted copy that `pretrained.load` writes on its first call, where the subprocess (with the
    # shipped table) looks for torchvision's resnet18.
    tv_entry(monkeypatch, tv_file, closed_port_url())
    (caches / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (caches / "torch" / "hub" / "checkpoints" / name).write_bytes(data)
    pretrained.load_variables("resnet18", progress=False)
    real = dataclasses.replace(pretrained.find("resnet18"), hash="f37072fd")
    pretrained.converted_path(pretrained.find("resnet18")).rename(pretrained.converted_path(real))
    evaluation = run_module("train.main", *common, "--init_from=torchvision", "--mode=eval",
                            "--config.num_classes=1000", f"--workdir={tmp_path / 'eval'}", env=dict(os.environ))
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    result = json.loads((tmp_path / "eval" / "eval_validation.json").read_text())

    pipe = jdata.make_pipeline(dataset, "validation", batch_size=8, image_shape=(32, 32, 3), train=False, seed=0)
    losses = []
    for batch in pipe.epoch(0):
        keep = batch["mask"] > 0
        logits = torch.from_numpy(torch_logits(torch_model, batch["image"])[keep])
        losses += torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["label"][keep]).long(),
                                                    reduction="none").tolist()
    assert result["count"] == len(losses) == 8
    assert abs(result["loss"] - float(np.mean(losses))) < 1e-4 * max(1.0, abs(result["loss"]))


def publisher_entry(monkeypatch, **preprocessing):
    """resnet18's table entry with other preprocessing (the file itself comes from --init_from=FILE.pth)."""
    return point_table(monkeypatch, dataclasses.replace(pretrained.find("resnet18"), **preprocessing))


def eval_pipeline_and_files(config, metadata):
    """The pipeline `evaluate` builds for `config` and weights with `metadata`; its files in batch order."""
    from train import loop

    recorded = loop.as_recorded(config, metadata)
    pipe = loop.make_pipeline(recorded, "validation", train=False, batch_size=8,
                              image_shape=(recorded.image_size, recorded.image_size, 3))
    files = [path.decode() for path, _ in pipe.source.examples().as_numpy_iterator()]
    return pipe, files


# Pillow resizes uint8 images in two passes, rounding after each; tf.image.resize keeps floats (its
# antialiased bilinear kernel is Pillow's triangle filter). Measured on the photos here: at most 1.00005/255
# per pixel on the [0, 1] scale, 0.30/255 on average; at 256/232/342 -> 224/299 on 257-500 px photos at most
# 1.0/255.
RESIZE_ROUNDING = 1.001 / 255


def test_eval_mode_prepares_images_as_the_publisher(tv_file, monkeypatch, tmp_path, capsys):
    """`--mode=eval --init_from=...` (loop.evaluate) with weights whose publisher resizes to 36 and crops 32
    (the ratio of neither 256/224 nor the config's crop_fraction) and normalizes with mean = std = 0.5
    (googlenet's, inception_v3's): the pipeline's images are the publisher's transform of the same files
    (jaxcnn.imagenet.eval_transform, equal to torchvision's) to within Pillow's rounding, and the loss is
    torch's on those images. With Keras VGG's preprocessing the channels come reversed (BGR) and unscaled by
    std, as the publisher feeds them."""
    from train import loop
    from train.configs import recipe_for

    torch_model, data, _ = tv_file
    (tmp_path / "resnet18.pth").write_bytes(data)
    dataset = f"folder:{write_folder(tmp_path / 'pets')}"
    config = recipe_for("resnet18", dataset)
    config.update(dict(init_from=str(tmp_path / "resnet18.pth"), image_size=-1, eval_batch_size=8))
    assert (config.crop_fraction, config.normalize) == (0.875, "dataset")  # what the old path would use

    entry = publisher_entry(monkeypatch, resize=36, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    _, metadata = pretrained.load_init(config.init_from, "resnet18")
    pipe, files = eval_pipeline_and_files(config, metadata)
    images = np.concatenate([b["image"][b["mask"] > 0] for b in pipe.epoch(0)])
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in pipe.epoch(0)])
    publisher = np.stack([imagenet.eval_transform(Image.open(f), **entry.preprocessing) for f in files])
    assert images.shape == publisher.shape == (8, 32, 32, 3)
    assert np.abs(images - publisher).max() * 0.5 <= RESIZE_ROUNDING  # std 0.5: back on the [0, 1] scale

    result = loop.evaluate(config, tmp_path / "eval")
    assert "crop_fraction 0.8888888888888888 (not 0.875)" in capsys.readouterr().err
    torch_loss = lambda x: float(torch.nn.functional.cross_entropy(  # noqa: E731
        torch.from_numpy(torch_logits(torch_model, x)), torch.from_numpy(labels).long()))
    assert result["count"] == 8
    assert abs(result["loss"] - torch_loss(images)) < 1e-4 * max(1.0, abs(result["loss"]))
    # On the publisher's own images torch's loss differs by the resize rounding alone: measured 9.2e-3 on a
    # loss of 35.3 (2.6e-4 relative; this sharp classifier's large logits magnify pixel round-off).
    assert abs(result["loss"] - torch_loss(publisher)) < 2e-3 * abs(result["loss"])

    keras_vgg = pretrained.find("vgg16", "keras")
    entry = publisher_entry(monkeypatch, resize=36, crop=32, mean=keras_vgg.mean, std=keras_vgg.std,
                            channels=keras_vgg.channels)
    _, metadata = pretrained.load_init(config.init_from, "resnet18")
    pipe, files = eval_pipeline_and_files(config, metadata)
    images = np.concatenate([b["image"][b["mask"] > 0] for b in pipe.epoch(0)])
    publisher = np.stack([imagenet.eval_transform(Image.open(f), **entry.preprocessing) for f in files])
    assert entry.channels == "BGR" and publisher.max() > 100  # caffe: BGR on the 0-255 scale
    assert np.abs(images - publisher).max() / 255 <= RESIZE_ROUNDING
    rgb = np.stack([imagenet.eval_transform(Image.open(f), **dict(entry.preprocessing, channels="RGB"))
                    for f in files])
    assert np.abs(images - rgb).max() / 255 > 10 * RESIZE_ROUNDING  # the order matters on these photos
