import shutil

import pytest

from golfcore.config import RunConfig
from golfcore.errors import DataError
from golfcore.plugins import discover
from golfcore.run import Session


def test_damaged_tokenizer_is_named_before_training(tmp_path, pystdlib_root):
    root = tmp_path / "data"
    shutil.copytree(pystdlib_root, root)
    tokenizer = root / "pystdlib" / "tokenizer.model"
    raw = bytearray(tokenizer.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: still a file of the right size
    tokenizer.write_bytes(bytes(raw))
    config = RunConfig(source="<test>")
    config.data.root, config.train.device = str(root), "cpu"
    with pytest.raises(DataError, match=f"tokenizer {tokenizer} is damaged: its sha256 differs"):
        Session(config, discover())
