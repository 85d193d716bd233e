"""Shared fixtures: a tiny tokenizer and a prepared toyworld dataset, built once per session."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """(data_dir, tokenizer) for ~300 toyworld documents; vocab 512."""
    from lmforge.data import prepare_shards
    from lmforge.tokenizer import train_tokenizer
    from lmforge.toyworld import generate_world, pretraining_corpus

    root = tmp_path_factory.mktemp("toy")
    docs = pretraining_corpus(generate_world(0))[:300]
    tok = train_tokenizer(docs, root / "tok", vocab_size=512)
    prepare_shards(docs, tok, root / "data", val_fraction=0.1, seed=0, progress=False)
    return root / "data", tok


def shared_data(*parts) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the ../shared data layer is only present beside the repo on CI "
                    f"and the maintainers' machines")
    return path
