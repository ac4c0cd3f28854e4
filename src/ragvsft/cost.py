"""The monthly cost of each arm from the run's measured token counts and training time, and the break-even volume
where fine-tuning's shorter prompts pay for its training and hosting.

    ragvsft cost runs/quick --queries-per-month 100000 --input-price 0.2 --output-price 0.6

The assumptions (volume and prices) are the `cost:` section of the run's config (defaults.yaml holds the defaults);
the command's flags override them for one table.

Model: per query, prompt tokens x input price + generated tokens x output price (prices per million tokens). Arms with
a fine-tuned model add a monthly hosting fee for the dedicated model; the closed-book adapter (which holds the facts)
also adds its training run, repeated `retrains` times a month (documents change), priced at the measured training
hours x the compute price per hour. The RAFT reader learnt to read, not the facts: a document change needs a re-index,
not a new reader, so it adds hosting only.
"""

from __future__ import annotations

from .catalogue import TRAINED, label, model_of
from .config import CostConfig, default_cost


def run_costs(results: dict, **overrides) -> CostConfig:
    """The run's `cost:` section (defaults.yaml's for runs older than it), with the given keys replaced."""
    section = (results.get("config") or {}).get("cost")
    base = CostConfig.model_validate(section) if isinstance(section, dict) else default_cost()
    return CostConfig.model_validate(base.model_dump() | {k: v for k, v in overrides.items() if v is not None})


def cost_table(results: dict, prices: CostConfig | None = None) -> dict:
    """Per arm: cost per query, fixed monthly cost, total monthly cost; and break-even volumes against RAG.
    `prices` defaults to the run's own cost section."""
    prices = prices or run_costs(results)
    queries_per_month = prices.queries_per_month
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
    return {"queries_per_month": queries_per_month, "prices": prices.model_dump(),
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
