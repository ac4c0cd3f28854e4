"""The model cache: the shipped GGUF is converted once per content, and a new version replaces the old one."""

import os

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
