import json

import pytest
import torch

from dae.checkpoint import load_model, save_model
from dae.models import create_model


@pytest.mark.parametrize("name,kw", [("bn_leaky", {"filters": [8, 4, 4, 2]}), ("unet", {"width": 8}),
                                     ("conv28k", {})])
def test_model_dir_roundtrip(tmp_path, name, kw):
    torch.manual_seed(0)
    m = create_model(name, channels=3, **kw).eval()
    save_model(m, str(tmp_path / "m"), noise="gaussian:0.5", metrics={"psnr": 20.0})
    m2, cfg = load_model(str(tmp_path / "m"))
    assert cfg["model"] == name and cfg["channels"] == 3 and cfg["noise"] == "gaussian:0.5"
    x = torch.rand(2, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x))


def test_unknown_model_in_config_lists_known(tmp_path):
    m = create_model("conv28k")
    save_model(m, str(tmp_path / "m"))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model"] = "nope"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="known models"):
        load_model(str(tmp_path / "m"))


def test_not_a_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model(str(tmp_path))
