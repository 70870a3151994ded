"""invemb.io: atomic writes and the early output check shared by encode, invert and vocab build."""
import json

import pytest

from invemb.io import atomic_write_json, check_output_file


def test_check_output_file_returns_a_path_and_refuses_a_folder(tmp_path):
    assert check_output_file(str(tmp_path / "new.npy"), ".npy file") == tmp_path / "new.npy"
    (tmp_path / "taken.npy").mkdir()
    with pytest.raises(IsADirectoryError, match=r"taken.npy: is a folder; give the \.npy file to write"):
        check_output_file(tmp_path / "taken.npy", ".npy file")


def test_atomic_write_replaces_whole_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": [1, 2]})
    assert json.loads(target.read_text()) == {"x": [1, 2]}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]
    with pytest.raises(IsADirectoryError, match="is a folder"):
        atomic_write_json(tmp_path / "sub", {})


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    import os

    from invemb import io

    mask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "new.json", {})
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o666 & ~io._UMASK  # not mkstemp's 0600
        assert io._UMASK == mask
        os.chmod(tmp_path / "new.json", 0o640)
        atomic_write_json(tmp_path / "new.json", {"x": 1})
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
        # a writer that makes a file of its own in the temporary's place (safetensors does) gets it too
        import torch
        from safetensors.torch import save_file

        from invemb.io import atomic_save_file

        atomic_save_file(tmp_path / "w.safetensors", lambda p: save_file({"w": torch.zeros(2)}, p))
        assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o666 & ~io._UMASK
    finally:
        os.umask(mask)
