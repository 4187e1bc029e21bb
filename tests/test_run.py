import io
import shutil

import numpy as np
import pytest
import sentencepiece as spm

from golfcore.assemble import describe
from golfcore.config import RunConfig
from golfcore.data import SpecialTokens, write_shard
from golfcore.errors import ConfigError, DataError
from golfcore.plugins import discover
from golfcore.recipe import resolve
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


def test_model_vocab_size_must_match_the_tokenizer(pystdlib_root):
    config = RunConfig(source="quick.toml")
    config.data.root, config.train.device, config.model.vocab_size = str(pystdlib_root), "cpu", 2048
    with pytest.raises(ConfigError) as e:
        Session(config, discover())
    assert str(e.value) == (f"quick.toml: [model] vocab_size 2048 does not match the pystdlib tokenizer's 1024 pieces "
                            f"({pystdlib_root / 'pystdlib' / 'tokenizer.model'}; set model.vocab_size = 1024)")


def test_plugins_get_the_bos_id_of_the_run_tokenizer(tmp_path):
    """A tokenizer whose BOS is 5: the session reads it, and the plugins that mask at a BOS use it."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["abc abd abe xyz " * 50] * 20), model_writer=model, vocab_size=64,
                                   hard_vocab_limit=False, unk_id=0, eos_id=1, pad_id=2, bos_id=5, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    (tmp_path / "tok.model").write_bytes(model.getvalue())
    for split in ("train", "val"):
        write_shard(tmp_path / f"x_{split}_000000.bin", np.array([5, *sp.encode("abc xyz abd")] * 4))
    available = discover()
    config = resolve({"data": {"shards": str(tmp_path), "tokenizer": str(tmp_path / "tok.model")},
                      "model": {"vocab_size": sp.vocab_size()}, "train": {"device": "cpu"},
                      "plugins": {"smear_gate": {}, "bigram_hash": {}, "hedge_mixer": {}}}, available, "<test>")
    session = Session(config, available)
    assert config.tokens == SpecialTokens.of(sp) and config.tokens.bos_id == 5
    description, _ = describe(config, session.host, None)
    assert description.bos_id == 5
    built = session.build_model()
    assert [m.bos_id for m in built.modules() if type(m).__name__ in ("SmearGate", "BigramHash")] == [5, 5]
    assert session.host.collect("golf_eval_adapter", config=config)[0].bos_id == 5
