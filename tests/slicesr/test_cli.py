from preprocessing.to_zarr import convert
from slicesr.cli import main


def test_store_info_and_config(tmp_path, synth_dir, capsys):
    convert([str(synth_dir)], str(tmp_path / "s"), workers=0, progress=False)
    assert main(["store-info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "scans stored:        4" in out
    assert main(["store-info", str(tmp_path / "missing")]) == 2
    assert "not a slicesr slice store" in capsys.readouterr().err
    assert main(["config", "--set", "train.seed=3"]) == 0
    assert "seed: 3" in capsys.readouterr().out
    assert main(["config", "--set", "train.sed=3"]) == 2
    assert main([]) == 2
