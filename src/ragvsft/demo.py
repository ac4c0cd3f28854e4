"""A local web page for workshops: a question box, every arm's answer side by side, the retrieved passages, and
example questions from the probe to click.

    ragvsft demo runs/quick            # http://127.0.0.1:7860

Bound to 127.0.0.1 unless --host says otherwise; no share link, no analytics, no web fonts. Answers and passages are
shown in plain text boxes, so document and model text is never rendered as HTML.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:
    import gradio as gr
except ImportError:  # an optional extra: the message says how to get it
    from .files import InputError

    raise InputError(["ragvsft demo needs Gradio: pip install 'ragvsft[demo]' (make setup installs it)"]) from None

from .catalogue import label  # noqa: E402
from .live import Session  # noqa: E402


THEME_FONTS = {"font": ["system-ui", "sans-serif"], "font_mono": ["monospace"]}  # no web fonts


def build_demo(session: Session) -> gr.Blocks:
    with gr.Blocks(title=f"ragvsft — {session.corpus.organisation}", analytics_enabled=False) as page:
        gr.Markdown(f"## Prompt it, retrieve for it, or fine-tune it? — {session.corpus.organisation}\n"
                    "Type a question about the company's documents; every arm of this run answers it.")
        with gr.Row():
            question = gr.Textbox(label="Question", elem_id="question", scale=5)
            ask = gr.Button("Ask every arm", variant="primary", elem_id="ask", scale=1)
        info = gr.Textbox(label="Verdicts (probe questions only)", elem_id="info", interactive=False)
        boxes = []
        with gr.Row():
            for arm in session.arms:
                boxes.append(gr.Textbox(label=label(arm), elem_id=f"answer-{arm}", lines=6, interactive=False))
        passages = gr.Textbox(label="Retrieved passages", elem_id="passages", lines=8, interactive=False)
        gr.Examples(examples=[[q] for q in session.examples()], inputs=[question])

        def answer(text: str):
            if not text.strip():
                return ["Type a question first."] + [""] * (len(boxes) + 1)
            result = session.ask(text)
            rows = {r["arm"]: r for r in result["answers"]}
            outputs = [f"{r['answer']}\n\n[{r['seconds']:.2f} s, {r['prompt_tokens']}+{r['generated_tokens']} tokens]"
                       for r in (rows[a] for a in session.arms)]
            if result["set"]:
                gold = " / ".join(result["gold"]) if result["gold"] else "abstain"
                verdicts = ", ".join(f"{r['arm']}: {r['verdict']}" for r in result["answers"])
                summary = f"Probe set {result['set']}; gold: {gold}. {verdicts}"
            else:
                summary = "Not a probe question: no gold answer, so no verdicts."
            chunks = "\n\n".join(f"[{c['id']}]\n{c['text'].strip()}" for c in result["chunks"])
            return [summary, *outputs, chunks]

        ask.click(answer, inputs=[question], outputs=[info, *boxes, passages])
        question.submit(answer, inputs=[question], outputs=[info, *boxes, passages])
    return page


def launch(run_dir: Path | str, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
           session: Session | None = None):
    """Serve the demo page; with block=False return (page, url) and keep serving in the background (tests).
    `session`: the run's models already loaded (Session.open(run_dir)), e.g. shared by tests."""
    page = build_demo(session or Session.open(run_dir))
    page.queue(default_concurrency_limit=1)  # one model, one question at a time
    # Gradio 6 takes the theme at launch (its Blocks constructor no longer does).
    _, url, _ = page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                            show_error=True, inbrowser=False, theme=gr.themes.Default(**THEME_FONTS))
    return page, url
