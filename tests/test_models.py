"""The model cache: the shipped GGUF is converted once per content, and a new version replaces the old one."""

import os
from pathlib import Path

from ragvsft import models


def test_the_gguf_conversion_is_cached_by_content(tmp_path, monkeypatch):
    package = tmp_path / "package"
    package.mkdir()
    gguf = package / models.SMOLLM2_FILE
    gguf.write_bytes(b"weights v1")
    conversions = []

    def convert(source, target):
        conversions.append(target)
        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(source.read_bytes())

    monkeypatch.setenv("RAGVSFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_package_dir", lambda *a: package)
    monkeypatch.setattr(models, "_convert_gguf", convert)
    (tmp_path / "cache" / "smollm2-135m-instruct-270000000-1700000000").mkdir(parents=True)  # the old size+mtime key
    first = models.lm_folder("smollm2")
    os.utime(gguf, (1, 1))  # a reinstall: same content, new time
    assert models.lm_folder("smollm2") == first and len(conversions) == 1
    gguf.write_bytes(b"weights v2")
    second = models.lm_folder("smollm2")
    assert second != first and len(conversions) == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [second.name]  # nothing piles up


def test_the_model_hash_covers_weights_tokenizer_and_template(tiny_lm, tmp_path):
    import json
    import shutil

    from ragvsft.models import lm_sha256

    folder = Path(shutil.copytree(tiny_lm, tmp_path / "lm"))
    first = lm_sha256(str(folder))
    (folder / "README.md").write_text("a model card changes no answer")
    assert lm_sha256(str(folder)) == first
    template = folder / "chat_template.jinja"  # where transformers saves it; older versions: tokenizer_config.json
    if template.is_file():
        template.write_text(template.read_text() + " ")
    else:
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        settings["chat_template"] += " "
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    assert lm_sha256(str(folder)) != first  # a changed template must not reuse cached answers
    # Weights in .bin files count like .safetensors ones: two folders that differ only there differ.
    hashes = []
    for name, weights in (("a", b"one"), ("b", b"two")):
        other = tmp_path / name
        other.mkdir()
        (other / "config.json").write_text("{}")
        (other / "pytorch_model.bin").write_bytes(weights)
        hashes.append(lm_sha256(str(other)))
    assert hashes[0] != hashes[1]


def test_a_file_hash_is_remembered_only_while_the_file_is_unchanged(tmp_path):
    import os

    from ragvsft.files import sha256_file

    path = tmp_path / "weights.bin"
    path.write_bytes(b"one")
    first = sha256_file(path)
    assert sha256_file(path) == first
    path.write_bytes(b"two")  # the same size: only the file's times tell the change
    os.utime(path, ns=(1, 1))
    assert sha256_file(path) != first
