"""The monthly cost of each arm from the run's measured token counts and training time, and the break-even volume
where fine-tuning's shorter prompts pay for its training and hosting.

    ragvsft cost runs/quick --queries-per-month 100000 --input-price 0.2 --output-price 0.6

Model: per query, prompt tokens x input price + generated tokens x output price (prices per million tokens). Arms with
a fine-tuned model add a monthly hosting fee for the dedicated model; the closed-book adapter (which holds the facts)
also adds its training run, repeated `retrains` times a month (documents change), priced at the measured training
hours x the compute price per hour. The RAFT reader learnt to read, not the facts: a document change needs a re-index,
not a new reader, so it adds hosting only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .catalogue import TRAINED, label, model_of


@dataclass(frozen=True)
class Prices:
    """Defaults are illustrative list prices for a small hosted model; pass your own."""

    input_per_million: float = 0.20  # USD per million prompt tokens
    output_per_million: float = 0.60  # USD per million generated tokens
    compute_per_hour: float = 2.00  # USD per hour of the machine that trains the adapter
    finetuned_hosting_per_month: float = 50.0  # USD per month for serving a dedicated fine-tuned model
    retrains_per_month: float = 1.0  # how often the adapter is retrained as documents change


def cost_table(results: dict, queries_per_month: int, prices: Prices = Prices()) -> dict:
    """Per arm: cost per query, fixed monthly cost, total monthly cost; and break-even volumes against RAG."""
    training = results.get("training") or {}
    training_cost = training.get("seconds", 0.0) / 3600 * prices.compute_per_hour
    arms = {}
    for arm, f in results["arms"].items():
        per_query = (f["prompt_tokens_per_query"] * prices.input_per_million
                     + f["generated_tokens_per_query"] * prices.output_per_million) / 1e6
        fixed = {"base": 0.0, "reader": prices.finetuned_hosting_per_month,
                 "closed_book": prices.finetuned_hosting_per_month + training_cost * prices.retrains_per_month}[model_of(arm)]
        arms[arm] = {"cost_per_query": per_query, "fixed_per_month": round(fixed, 4),
                     "monthly": round(per_query * queries_per_month + fixed, 4),
                     "prompt_tokens_per_query": f["prompt_tokens_per_query"],
                     "generated_tokens_per_query": f["generated_tokens_per_query"]}
    break_even = {}
    if "rag" in arms:
        for arm in TRAINED:
            if arm in arms:
                saving = arms["rag"]["cost_per_query"] - arms[arm]["cost_per_query"]
                break_even[arm] = round(arms[arm]["fixed_per_month"] / saving) if saving > 0 else None
    return {"queries_per_month": queries_per_month, "prices": asdict(prices),
            "training_seconds": training.get("seconds"), "training_cost": round(training_cost, 4),
            "arms": arms, "break_even_vs_rag": break_even}


def break_even_sentence(table: dict) -> str:
    sentences = []
    for arm, volume in table["break_even_vs_rag"].items():
        name = label(arm)
        if volume is None:
            sentences.append(f"{name} never breaks even against RAG: its prompts are not shorter.")
        else:
            sentences.append(f"{name} breaks even against RAG at {volume:,} queries per month.")
    return " ".join(sentences)
