"""Where each shipped data file comes from, and how one upstream record becomes one output row.

One `Source` per file under the data root: the upstream repository pinned to a commit, the file(s) read
inside it (with a sha256 where a public pin or the offline copy fixes it), the row count (the data
README's), the licence, and a converter. A converter maps (record, upstream path) to the output row, or
to None when the record is not usable (a tie, a multi-turn arena battle, ...). Sampled files keep a
seeded random subset of the usable records in upstream order; the others keep every record.

Provenance of the pins (checked against public code and the hub's pages, never fetched from here):
revisions, file names and column names marked "verified" below were seen in public pins or listings;
"inferred" ones follow the dataset's documented layout but were not seen for this exact commit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from .rewardbench import check_counts


SEED = 1234


@dataclass(frozen=True)
class Remote:
    path: str                 # inside the repository
    sha256: str | None = None  # pinned content hash, when known


@dataclass(frozen=True)
class Source:
    file: str                 # output path under the data root
    rows: int                 # rows written (the data README's count)
    host: str                 # "hf" (a hub dataset) or "github" (raw files of a public repository)
    repo: str
    revision: str             # a commit sha
    remotes: tuple[Remote, ...]
    convert: Callable[[dict, str], dict | None]
    licence: str
    group: str = "train"      # `tinyrm data --only <group>`
    sample: bool = True       # False: every usable record, which must number exactly `rows`
    copy: bool = False        # True: the single upstream file is the output, byte for byte
    check: Callable[[list[dict]], None] | None = None  # extra check on the written rows

    @property
    def parquet(self) -> bool:
        return any(r.path.endswith(".parquet") for r in self.remotes)


# ---- converters ----

_RB_FIELDS = ("prompt", "chosen", "chosen_model", "rejected", "rejected_model", "subset", "id")


def rewardbench(r: dict, _: str) -> dict:
    return {k: r[k] for k in _RB_FIELDS}


def hh(r: dict, _: str) -> dict:
    """HH-RLHF transcripts are kept whole: the loader splits them (tinyrm.data.split_hh)."""
    return {"chosen": r["chosen"], "rejected": r["rejected"]}


def _generic(prompt, chosen, rejected, domain: str, source: str) -> dict | None:
    """A generic row with the upstream text verbatim, or None when a text is missing. Pairs with identical
    responses are kept, as in the shipped files: tinyrm.data's loader skips them when it reads."""
    if not all(isinstance(x, str) for x in (prompt, chosen, rejected)):
        return None
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "domain": domain, "source": source}


_ROLES = {"user": "User", "human": "User", "assistant": "Assistant", "system": "System"}


def render_verbatim(turns: list[dict]) -> str:
    """tinyrm.data's prompt rule without its stripping (the shipped files keep upstream whitespace):
    a lone user turn is its text, anything else `Role: text` blocks joined by a blank line."""
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{_ROLES.get(t['role'], t['role'].capitalize())}: {t['content']}" for t in turns)


def ultrafeedback(r: dict, _: str) -> dict | None:
    """TRL conversational pair: the last (assistant) messages are the responses, the shared turns before
    them the prompt."""
    ch, rj = r.get("chosen"), r.get("rejected")
    if not (isinstance(ch, list) and isinstance(rj, list) and len(ch) >= 2 and ch[:-1] == rj[:-1]):
        return None
    if ch[-1].get("role") != "assistant" or rj[-1].get("role") != "assistant":
        return None
    return _generic(render_verbatim(ch[:-1]), ch[-1].get("content"), rj[-1].get("content"), "chat", "ultrafeedback")


def pku(r: dict, _: str) -> dict | None:
    """chosen = the safer of the two responses (safer_response_id), whatever the helpfulness label."""
    safer = r.get("safer_response_id")
    if safer not in (0, 1):
        return None
    return _generic(r.get("prompt"), r.get(f"response_{safer}"), r.get(f"response_{1 - safer}"),
                    "safety", "pku-saferlhf")


def arena(r: dict, _: str) -> dict | None:
    """train.csv holds JSON lists of turns; single-turn battles with a winner only (ties dropped)."""
    try:
        prompts, a, b = (json.loads(r[k]) for k in ("prompt", "response_a", "response_b"))
    except (KeyError, TypeError, json.JSONDecodeError):
        return None
    if not (len(prompts) == len(a) == len(b) == 1) or str(r.get("winner_tie")) == "1":
        return None
    if str(r.get("winner_model_a")) == "1":
        chosen, rejected = a[0], b[0]
    elif str(r.get("winner_model_b")) == "1":
        chosen, rejected = b[0], a[0]
    else:
        return None
    return _generic(prompts[0], chosen, rejected, "chat", "chatbot-arena")


def dahoas(r: dict, _: str) -> dict | None:
    return _generic(r.get("prompt"), r.get("chosen"), r.get("rejected"), "chat", "dahoas-synthetic")


def stack_exchange(r: dict, _: str) -> dict | None:
    """Highest- vs lowest-voted answer (first of each on ties); HTML bodies kept as published."""
    answers = [a for a in r.get("answers") or [] if isinstance(a.get("pm_score"), int)]
    if len(answers) < 2:
        return None
    best = max(answers, key=lambda a: a["pm_score"])
    worst = min(answers, key=lambda a: a["pm_score"])
    if best["pm_score"] == worst["pm_score"]:
        return None
    return _generic(r.get("question"), best.get("text"), worst.get("text"), "reasoning", "stack-exchange")


_RMB_ROOT = "RMB_dataset/Pairwise_set/"


def rmb(domain: str) -> Callable[[dict, str], dict | None]:
    def convert(r: dict, path: str) -> dict | None:
        source = "rmb/" + path.removeprefix(_RMB_ROOT).removesuffix(".json")
        return _generic(render_verbatim(r["conversation_input"]), r["chosen"]["answer"], r["reject"]["answer"],
                        domain, source)
    return convert


def check_rewardbench(rows: list[dict]) -> None:
    check_counts(rows)


# ---- the table ----

HF_RB = "allenai/reward-bench"
REV_RB = "168d848cdbbea9764fae4a544dc9ca1e6cca4931"        # verified (public pins, with the sha256 below)
HF_HH = "Anthropic/hh-rlhf"                                 # also github.com/anthropics/hh-rlhf, same bytes
REV_HH = "09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa"        # verified (public pins)
HF_UF = "trl-lib/ultrafeedback_binarized"
REV_UF = "47124cb5778f5d50de1c7676a412828f3ea7c555"        # verified (hub listing of data/)
HF_PKU = "PKU-Alignment/PKU-SafeRLHF"
REV_PKU = "c04a25eb44ac0be2a714c16e072122466bc6d416"       # verified (hub listing of data/Alpaca3-8B)
HF_ARENA = "lmarena-ai/arena-human-preference-55k"         # formerly lmsys/lmsys-arena-human-preference-55k
REV_ARENA = "18c298340948c0e7f7727399fd459cca6ce0ca6f"     # verified (public pin, train.csv)
HF_DAHOAS = "Dahoas/synthetic-instruct-gptj-pairwise"
REV_DAHOAS = "73d437a1fac44454f65e620fdedc944065e8181f"    # verified (hub listing of data/)
HF_SE = "HuggingFaceH4/stack-exchange-preferences"
REV_SE = "2d5f5ce39da4fd64632d60da23b1d7e16f6ba6f1"        # verified commit; shard names inferred
GH_RMB = "Zhou-Zoey/RMB-Reward-Model-Benchmark"
REV_RMB = "2be3180857f2190b7ffa929d43190835627f1f4d"       # verified (repository snapshot, hashes below)

_RMB_SAFETY = {
    "Harmlessness/S1": "032f19ad3729d86ec167b2c3eb86ec422d3f2377579aa746b0455472bd995080",
    "Harmlessness/S2": "dbf3c3ac79a63e7c52be78545353c55d16fa5928590fef6762c271e6af062517",
    "Harmlessness/S3": "006d68eb804823f3f08998767d9bf2c53200d1814f86a0fd94daf4ccc8b3f123",
    "Harmlessness/S4": "ea1c062b1f6718ac89bac2cedc13c2e703e43b9bf1bc63fa34570759dbd826bc",
    "Harmlessness/S5": "33047604a901e79bddfda7ec2df173c2ebf0afec112c4a05dd88a0d04f9bf35d",
}
_RMB_CHAT = {
    "Helpfulness/Brainstorming/Problem Solving": "e6416e15e6c978d54510333ce681ec36f33777b4d79877c5b9e81ff49ade560c",
    "Helpfulness/Chat/Casual Conversation": "8845fa20aaf93f786d591873a47b9e8b9972147f65a829e7c30298e0ae0c871a",
    "Helpfulness/Chat/Discussion": "9c750d2ac66b1f80af78b341705526838736b446219afeaf83884e5b346861b2",
    "Helpfulness/Chat/Supportive Conversation": "2b3d024c4f17454b6f34a9de30bd437191826fc66d60cc08d2bc23de9961d8c9",
    "Helpfulness/Classification/Content Categorization":
        "fbb360d6fcdc93511ef34042e586e7caee16530f11f055214e24d55e8daf2d0d",
    "Helpfulness/Classification/Quality and Compliance Assessment":
        "ce511eac5cd23383b2af4c5657a0195d5c1acece7cbb112e6daa218c7192c701",
    "Helpfulness/Closed QA/ContextBased": "c3fe6e95b4cf0a867bc42f07a6ac9648e9793255820b5697a98a3480a168900f",
    "Helpfulness/Closed QA/OptionBased": "93d9bf400440b78416d283de0e7c833b2f4a320e7ff496b41836c4c72412eb37",
    "Helpfulness/Generation/Professional Content Generation":
        "2fac46e67ef8a2bb4b9798482e38d65d63f939a266d5344aac250ee1a043dd8a",
    "Helpfulness/Rewrite/Paraphrasing": "7de5954fc3c227c488321252c5ca4c9b19200a6d4cb697f7e342475dd4db07fa",
    "Helpfulness/Rewrite/PostQuality Assessment Rewriting":
        "19e1484d2da0e590db8057fa58a50ce80ba68c185572919451551b2682d8cb05",
    "Helpfulness/Rewrite/Textual ExpansionReduction": "d172f0a026291cfab407d8289aa258f03ae1abff72b394d4af61ea5bbf1cef82",
    "Helpfulness/Rewrite/Tone Adjustment": "4316594272d4d5d83a272eeebce19b4318322cb29caaa6983fe1c44d57fa3915",
    "Helpfulness/Role Playing/General Character": "1be349e066b6442302080d5fea5a179bb11fb703c3dea0a1ebd5c682533e2e10",
    "Helpfulness/Role Playing/Specific Character": "e4bea240a0277727ba4c5b83096405abd29fcaf911ea8b79221d32e1c3dc14ac",
    "Helpfulness/Summarization/Specialized Summaries": "9810fe2de4ba88bac2f82bc8b62b2dff6e8f0f8079aae075ab0d050e8d34656b",
    "Helpfulness/Summarization/Standard Summaries": "79e8985b4a066e59c38716a25ae24e45dcd9612d7cc501fdf51941b619471411",
    "Helpfulness/Translation/GeneralExcerpt Language Translation":
        "d930d2dad11e9f769dc36118deb8f636f22d38350dcdd690584170e5bdc150ec",
    "Helpfulness/Translation/Literary and Cultural Translation":
        "e5cff28b5d0745d0fdc328eedf21581b799881cd127fd338c3eb60dde9a9d7ff",
    "Helpfulness/Translation/Technical and Scientific Translation":
        "97f20f59c5ef080acdd4294e32edc9330af66aad9ecde9c9ac9b1e9bde100d97",
}
_RMB_REASONING = {
    "Helpfulness/Code/Data Management": "9cc7547ff8c16ad2fb144bc017568bb3ad9ad06731a48446e8e70cd431d4bbd2",
    "Helpfulness/Code/Development and Implementation": "e038109c78130de3e0bc79275b22b8b528b0c33868d49ba376715cdcc4535596",
    "Helpfulness/Code/Documentation": "817bcd0d478c9ff714c0011b92ab0a28f2c729d31aaad1d7c5e676ece656eb78",
    "Helpfulness/Reasoning/Critical Thinking": "fed5aed85019e563b2df4d3e6e89647f27de04f8b0b72fc0f7b556714324440a",
    "Helpfulness/Reasoning/Human Decision Making": "4ab1e6a5f30e36267e844e22d466f4d25800ffbe6649ab94d36299b23adb1f9b",
    "Helpfulness/Reasoning/Logical Deduction": "62eedf90b698609ad9466fb93269d42cb4c5f2bf816da349afa66ffce89a8d78",
    "Helpfulness/Reasoning/Pattern Recognition": "bf866f0bf748adadbdd3df79db86f8d0d8034a9c285209d2c0c1c0724a13ceb3",
}


def _rmb_remotes(table: dict[str, str]) -> tuple[Remote, ...]:
    return tuple(Remote(f"{_RMB_ROOT}{name}.json", sha) for name, sha in table.items())


_RMB_LICENCE = "Apache-2.0 as redistributed; original terms not verified"
_UNVERIFIED = "upstream terms (not verified here)"

SOURCES: tuple[Source, ...] = (
    Source("rewardbench/filtered.jsonl", 2985, "hf", HF_RB, REV_RB,
           (Remote("data/filtered-00000-of-00001.parquet",
                   "65473c20ed0627e02503557ae102c25c6b0e66b5ed69ee327e224bb95e70ca29"),),
           rewardbench, "ODC-BY; each component keeps its own licence", group="rewardbench", sample=False,
           check=check_rewardbench),
    Source("train/hh-rlhf-harmless-base-test.jsonl.gz", 2312, "hf", HF_HH, REV_HH,
           (Remote("harmless-base/test.jsonl.gz", "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03"),),
           hh, "MIT", sample=False, copy=True),
    Source("train/hh-rlhf-harmless-sample.jsonl", 500, "hf", HF_HH, REV_HH,
           (Remote("harmless-base/train.jsonl.gz"),), hh, "MIT"),
    Source("train/hh-rlhf-helpful-sample.jsonl", 500, "hf", HF_HH, REV_HH,
           (Remote("helpful-base/train.jsonl.gz"),), hh, "MIT"),
    Source("train/ultrafeedback-train.jsonl", 1000, "hf", HF_UF, REV_UF,
           (Remote("data/train-00000-of-00001.parquet"),), ultrafeedback, "MIT"),
    Source("train/ultrafeedback-eval.jsonl", 200, "hf", HF_UF, REV_UF,   # the test split: disjoint from train
           (Remote("data/test-00000-of-00001.parquet"),), ultrafeedback, "MIT"),
    Source("train/pku-saferlhf-sample.jsonl", 500, "hf", HF_PKU, REV_PKU,
           (Remote("data/Alpaca3-8B/train.jsonl"),), pku, "CC-BY-NC-4.0 (non-commercial)"),
    Source("train/chatbot-arena-sample.jsonl", 420, "hf", HF_ARENA, REV_ARENA,
           (Remote("train.csv"),), arena, _UNVERIFIED),
    Source("train/dahoas-synthetic-sample.jsonl", 500, "hf", HF_DAHOAS, REV_DAHOAS,
           (Remote("data/train-00000-of-00001-542f4ab2e5246fdf.parquet"),), dahoas, _UNVERIFIED),
    Source("train/stack-exchange-sample.jsonl", 465, "hf", HF_SE, REV_SE,   # two small shards of a 22 GB set
           (Remote("data/3dprinting.meta.stackexchange.com/train-00000-of-00001.parquet"),
            Remote("data/3dprinting.stackexchange.com/train-00000-of-00001.parquet")), stack_exchange, "CC-BY-SA-4.0"),
    Source("train/rmb-chat.jsonl.gz", 4455, "github", GH_RMB, REV_RMB, _rmb_remotes(_RMB_CHAT), rmb("chat"),
           _RMB_LICENCE, sample=False),
    Source("train/rmb-safety.jsonl.gz", 3336, "github", GH_RMB, REV_RMB, _rmb_remotes(_RMB_SAFETY), rmb("safety"),
           _RMB_LICENCE, sample=False),
    Source("train/rmb-reasoning.jsonl.gz", 1479, "github", GH_RMB, REV_RMB, _rmb_remotes(_RMB_REASONING),
           rmb("reasoning"), _RMB_LICENCE, sample=False),
)
