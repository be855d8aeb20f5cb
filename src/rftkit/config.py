"""Typed run configuration: one model per concern, loaded from YAML, overridden by `key=value`.

    rft train examples/arithmetic/grpo.yaml train.steps=50 rollout.temperature=0.8

Data files, local model folders and grader files named in a YAML file are relative to that
file, so a config works from any directory; values given on the command line are relative to
the current directory, like any other command-line path. A grader file (`grader: g.yaml`) is
read when the config loads, so the resolved config (printed, saved as RUN_DIR/config.yaml)
holds the grader object itself. Unknown keys and wrong types are a ConfigError naming the key
(the CLI exits 2), before any model is loaded. `rft config show` prints every key with its
default and its description, which lives once, in the `Field` below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rftkit.errors import ConfigError, UserError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    path: str = Field("bundled:tiny-arith", description="HF folder, hub id, or bundled:NAME")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights and compute dtype")
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:1, ...")


class LoraConfig(Section):
    enabled: bool = Field(False, description="train a LoRA adapter instead of all weights")
    rank: int = Field(8, gt=0, description="rank r of the adapter's low-rank update matrices")
    alpha: float = Field(16.0, gt=0, description="adapter scale: the update is multiplied by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | str = Field("all-linear", description="modules that get an adapter (peft "
                                            "target_modules): all-linear or a list of names")
    merge_final: bool = Field(False, description="save the final model with the adapter merged into the weights")


DATA_FORMATS = ("auto", "jsonl", "parquet", "hf")  # rftkit.data.loaders


class SourceConfig(Section):
    """One source of a mixture (`data.train` as a list): its file, its share of the prompts, its own grader."""

    path: str = Field(..., description="the source's prompts: JSONL, parquet (verl's layout) or a Hugging Face dataset folder")
    weight: float = Field(1.0, gt=0, description="share of the prompts drawn from this source (weights are normalised)")
    name: str | None = Field(None, description="the source's name in metrics (critic/rewards/NAME/mean); default: the "
                             "file's stem")
    grader: dict[str, Any] | str | None = Field(None, description="this source's grader (a grader object, a type name or "
                                                "a grader file); None = the run's `grader`")
    val: str | None = Field(None, description="this source's held-out Items, scored with its grader as val/NAME/pass@1")
    format: str = Field("auto", description="auto (by suffix; a folder = Hugging Face dataset), jsonl, parquet, hf")
    columns: dict[str, str] | None = Field(None, description="this source's column mapping; None = data.columns")

    @field_validator("grader", mode="before")
    @classmethod
    def _grader_file(cls, value: Any) -> Any:
        return grader_from_file(value, Path())

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        import re

        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError(f"a source name appears in metric names, so it must be letters, digits, _ . - (got {value!r})")
        return value

    check_format = field_validator("format")(lambda v: _in(v, DATA_FORMATS, "data format"))


class DataConfig(Section):
    train: str | list[SourceConfig] = Field(
        "examples/arithmetic/train.jsonl", description="training prompts: one file (JSONL, parquet in verl's layout, or "
        "a Hugging Face dataset folder), or a mixture: a list of {path, weight, name, grader, val} (docs/DATA.md)")
    val: str | None = Field(None, description="validation Items, scored every run.eval_interval steps")
    format: str = Field("auto", description="format of data.train/data.val: auto (by suffix; a folder = Hugging Face "
                        "dataset), jsonl, parquet, hf")
    columns: dict[str, str] = Field(default_factory=dict, description="column mapping for parquet and Hugging Face data: "
                                    "rftkit field -> column, e.g. {prompt: question, reference_answer: answer}")
    skip_bad_lines: bool = Field(False, description="train on the good lines of a file that fails validation")
    shuffle: bool = Field(True, description="reshuffle the prompts every epoch (seeded)")

    check_format = field_validator("format")(lambda v: _in(v, DATA_FORMATS, "data format"))

    @field_validator("train")
    @classmethod
    def _sources(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("a mixture needs at least one source")
            names = [s.name or Path(s.path).stem for s in value]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"two sources are named {dup[0]!r}: give each a distinct `name`")
        return value

    @property
    def sources(self) -> list[SourceConfig]:
        """data.train as a list of sources (one file is a mixture of one, named by its stem)."""
        if isinstance(self.train, str):
            return [SourceConfig(path=self.train, name=Path(self.train).stem or "train", format=self.format)]
        return [s if s.name else s.model_copy(update={"name": Path(s.path).stem}) for s in self.train]


def _in(value: str, valid: tuple[str, ...], kind: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return value


class ReasoningConfig(Section):
    enabled: bool = Field(False, description="split each completion into thinking and answer (graders see the answer)")
    effort: Literal["none", "low", "high"] | None = Field(None, description="the chat template's thinking switch "
                                                          "(enable_thinking) and the thinking budget; None = leave the "
                                                          "template's default")
    budget_tokens: int | None = Field(None, gt=0, description="most thinking tokens; at the budget the engine closes the "
                                      "block itself (inserted tokens masked out of the loss); None = no budget")
    open_tag: str = Field("<think>", description="the tag that opens a thinking block")
    close_tag: str = Field("</think>", description="the tag that closes it")
    grade_thinking: bool = Field(False, description="graders see the thinking too (the whole completion)")
    efficiency: Literal["none", "linear", "rank"] = Field("none", description="token efficiency among correct answers: "
                                                          "linear: reward * (1 - alpha * thinking / budget); rank: the "
                                                          "group's longest correct thinking loses alpha (docs/REASONING.md)")
    efficiency_alpha: float = Field(0.5, ge=0, le=1, description="the most reward shorter thinking can take away")

    @field_validator("open_tag", "close_tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a thinking tag must be non-empty text, e.g. <think> and </think>")
        return value


class ReplayConfig(Section):
    path: str | None = Field(None, description="SFT rows (JSONL conversations) of an older skill to keep; None = no replay")
    weight: float = Field(0.1, ge=0, description="coefficient of the replay SFT loss added to each GRPO update")
    loss: Literal["sft"] = Field("sft", description="the replay loss: sft (next-token NLL on the assistant turns)")
    batch_size: int = Field(8, gt=0, description="replay examples drawn per update")


class GradingConfig(Section):
    timeout_s: float = Field(10.0, gt=0, description="deadline of one grader call")
    step_budget_s: float = Field(300.0, gt=0, description="deadline for grading all of one step's rollouts")
    workers: int = Field(4, gt=0, description="concurrent grader calls")


class RolloutConfig(Section):
    num_generations: int = Field(8, ge=2, description="completions per prompt (the group size)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature; the loss's log-probs use the same one")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: the smallest set of tokens holding this "
                         "probability mass; 1 = off")
    top_k: int = Field(0, ge=0, description="sample only from the k most likely tokens; 0 = off")
    max_new_tokens: int = Field(48, gt=0, description="longest completion in tokens; longer ones are cut off "
                                "(see algorithm.overlong_buffer)")
    batch_size: int = Field(256, gt=0, description="rows generated together (memory bound)")
    engine: Literal["auto", "hf", "vllm"] = Field("auto", description="hf: transformers + rftkit's decode loop; vllm: "
                                                  "vLLM's engine (docs/VLLM.md); auto: vllm when installed and on a GPU")
    vllm_gpu_memory_utilization: float = Field(0.4, gt=0, le=1, description="vllm on a GPU: its share of GPU memory "
                                               "(the policy, reference and optimizer need the rest)")
    vllm_kv_cache_gb: float = Field(1.0, gt=0, description="vllm on CPU: its KV cache in GiB")
    vllm_sleep: bool = Field(False, description="vllm on a GPU: release its KV cache during each update (sleep mode)")
    vllm_max_model_len: int = Field(1024, gt=0, description="vllm: longest prompt + completion in tokens")


def _one_of(table: str, kind: str):
    """A validator: the value must be a key of the named table (`module:NAME`), listed when it is not."""

    def check(value: str) -> str:
        import importlib

        module, _, name = table.partition(":")
        valid = getattr(importlib.import_module(module), name)
        if value not in valid:
            raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(sorted(valid))}")
        return value

    return check


ALGORITHMS = ("grpo", "sft", "dpo", "kto", "reward_model", "rejection_sampling", "asft")  # rftkit.train.stages.STAGES


class AlgorithmConfig(Section):
    name: str = Field("grpo", description="training algorithm: " + ", ".join(ALGORITHMS))
    advantage: str = Field(
        "group_mean_std", description="group_mean_std: (r - mean) / std (GRPO); group_mean: r - mean (Dr. GRPO); "
        "rloo: leave-one-out baseline; batch_normalized: group-centred, batch std"
    )
    loss_aggregation: str = Field(
        "token_mean", description="token_mean (DAPO), sequence_mean (GRPO paper), constant: / (rows * max_new_tokens) (Dr. GRPO)"
    )
    epsilon: float = Field(0.2, ge=0, description="clip range of the probability ratio (the low side with epsilon_high)")
    epsilon_high: float | None = Field(None, ge=0, description="upper clip range (DAPO clip-higher, e.g. 0.28); None = epsilon")
    beta: float = Field(0.0, ge=0, description="KL-to-reference coefficient; 0 loads no reference model")
    kl_estimator: str = Field("k3", description="k1: logp - ref (unbiased), k3: exp(d) - d - 1 (>= 0, lower variance)")
    kl_in: Literal["loss", "reward"] = Field("loss", description="loss: beta * KL added to the loss (GRPO paper); "
                                             "reward: beta * summed KL subtracted from each reward before advantages (PPO-RLHF)")
    updates_per_batch: int = Field(1, ge=1, description="mu: optimizer steps on each batch of rollouts; > 1 uses importance ratios")
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose rewards are all equal and sample more prompts to refill")
    max_refill_rounds: int = Field(4, ge=0, description="dynamic sampling: extra generation rounds per step before training on fewer groups")
    overlong_buffer: int = Field(0, ge=0, description="DAPO soft overlong penalty: linear from 0 at max_new_tokens - buffer "
                                 "to -overlong_penalty at max_new_tokens; 0 = off")
    overlong_penalty: float = Field(1.0, ge=0, description="size of the overlong penalty at max_new_tokens")
    credit: Literal["trajectory", "turn"] = Field(
        "trajectory", description="multi-turn (environment:): trajectory: one advantage for the whole episode; turn: "
        "each assistant turn gets the discounted sum of group-normalised turn rewards from it on (docs/AGENTS.md)")
    gamma: float = Field(1.0, ge=0, le=1, description="credit: turn: discount of later turns' rewards")

    check_name = field_validator("name")(_one_of("rftkit.train.stages:STAGES", "algorithm"))
    check_advantage = field_validator("advantage")(_one_of("rftkit.algorithms.grpo:ADVANTAGES", "advantage estimator"))
    check_aggregation = field_validator("loss_aggregation")(_one_of("rftkit.algorithms.grpo:AGGREGATIONS", "loss aggregation"))
    check_kl = field_validator("kl_estimator")(_one_of("rftkit.algorithms.grpo:KL_ESTIMATORS", "KL estimator"))


class SFTConfig(Section):
    packing: bool = Field(True, description="pack several examples into each row (block-diagonal attention, no padding)")
    pack_length: int = Field(512, gt=0, description="tokens per packed row")


class DPOConfig(Section):
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference (IPO: the paper's tau)")
    loss: str = Field("sigmoid", description="sigmoid (DPO; cDPO with label_smoothing) or ipo")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO: assumed probability that a label is flipped")

    check_loss = field_validator("loss")(_one_of("rftkit.algorithms.dpo:LOSSES", "DPO loss"))

    @model_validator(mode="after")
    def _smoothing(self) -> DPOConfig:
        if self.loss == "ipo" and self.label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid loss only; set dpo.label_smoothing=0 for ipo")
        return self


class KTOConfig(Section):
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference")
    desirable_weight: float = Field(1.0, gt=0, description="weight of the loss on desirable (label: true) examples")
    undesirable_weight: float = Field(1.0, gt=0, description="weight of the loss on undesirable (label: false) examples")


class RewardModelConfig(Section):
    margin: bool = Field(False, description="use each pair's `margin` field in the Bradley-Terry loss")


class RejectionSamplingConfig(Section):
    rounds: int = Field(3, gt=0, description="generate -> filter -> SFT rounds; train.steps are split evenly between them")
    prompts_per_round: int = Field(512, gt=0, description="prompts sampled (rollout.num_generations each) at the start of a round")
    threshold: float = Field(1.0, description="keep completions whose reward is >= this")
    max_per_prompt: int = Field(1, gt=0, description="kept completions per prompt (distinct texts)")


class ASFTConfig(Section):
    baseline: str = Field("prompt_mean", description="prompt_mean: other answers to the same prompt; global_mean: the batch")
    temperature: float = Field(1.0, gt=0, description="weight = exp(advantage / temperature)")
    max_weight: float = Field(20.0, gt=0, description="clip of the weights")
    normalization: str = Field("mean_one", description="mean_one: weights rescaled to mean 1 per batch; none")

    check_baseline = field_validator("baseline")(_one_of("rftkit.algorithms.asft:BASELINES", "A-SFT baseline"))
    check_norm = field_validator("normalization")(_one_of("rftkit.algorithms.asft:WEIGHT_NORMALIZATIONS", "A-SFT weight normalization"))


class TrainConfig(Section):
    steps: int = Field(100, gt=0, description="training steps of the run (GRPO: algorithm.updates_per_batch optimizer "
                       "steps each); may be raised on --resume")
    prompts_per_step: int = Field(16, gt=0, description="prompts per step, each a group of rollout.num_generations "
                                  "completions (offline stages: examples or pairs)")
    micro_batch_size: int = Field(64, gt=0, description="rows per forward/backward pass")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate, constant after the warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warm-up from lr / warmup_steps to lr; 0 = none")
    max_grad_norm: float = Field(1.0, gt=0, description="clip the gradient's global L2 norm to this before each optimizer step")
    seed: int = Field(0, description="seed of torch, numpy, random and the prompt order")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")


class RunConfig(Section):
    dir: str = Field("runs/grpo", description="run directory (metrics, samples, checkpoints, final model)")
    checkpoint_interval: int = Field(25, ge=0, description="steps between checkpoints; 0 = only at the end")
    keep_checkpoints: int = Field(2, gt=0, description="newest checkpoints kept in RUN_DIR/checkpoints; older ones are deleted")
    sample_interval: int = Field(10, ge=0, description="steps between writes to samples.jsonl; 0 = never")
    samples_per_write: int = Field(4, gt=0, description="groups written to samples.jsonl each time")
    eval_interval: int = Field(0, ge=0, description="steps between validations on data.val; 0 = never")
    eval_samples: int = Field(1, gt=0, description="completions per validation item")
    eval_at_start: bool = Field(False, description="also validate the starting model, logged as step 0 (needs eval_interval)")
    tensorboard: bool = Field(False, description="also write TensorBoard event files to RUN_DIR/tensorboard")
    mlflow: bool = Field(False, description="also log to MLflow (default store: RUN_DIR/mlruns)")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow store; None = RUN_DIR/mlruns")
    mlflow_experiment: str = Field("rftkit", description="MLflow experiment name")


class RuntimeConfig(Section):
    backend: Literal["local", "ray"] = Field("local", description="local: one process; ray: rollout and grader "
                                             "workers as Ray actors (pip install -e \".[ray]\"; docs/SCALING.md)")
    address: str = Field("", description="ray: empty = start a local Ray instance for the run; auto = join the "
                         "cluster `ray start --head` started here; HOST:PORT or ray://HOST:PORT = join that one")
    rollout_workers: int = Field(2, gt=0, description="ray: actors sampling completions, each with its own model copy")
    grader_workers: int = Field(2, gt=0, description="ray: actors grading, each with its own executor and sandbox pools")
    learners: int = Field(1, gt=0, description="ray: data-parallel learners (torch.distributed; 1 = the driver learns)")
    cpus_per_rollout_worker: float = Field(1.0, gt=0, description="ray: CPUs each rollout worker reserves (and torch threads)")
    gpus_per_rollout_worker: float = Field(0.0, ge=0, description="ray: GPUs each rollout worker reserves")
    cpus_per_grader_worker: float = Field(0.5, gt=0, description="ray: CPUs each grader worker reserves")
    cpus_per_learner: float = Field(1.0, gt=0, description="ray, learners > 1: CPUs each learner reserves (and torch threads)")
    gpus_per_learner: float = Field(0.0, ge=0, description="ray, learners > 1: GPUs each learner reserves")
    timeout_s: float = Field(600.0, gt=0, description="ray: the longest any call to a worker may take before the run stops")
    connect_timeout_s: float = Field(30.0, gt=0, description="ray: deadline for reaching runtime.address")


class AsyncConfig(Section):
    max_off_policy_steps: int = Field(0, ge=0, description="k: rollout workers generate up to k policy versions ahead of "
                                      "the learner (runtime.backend: ray); 0 = synchronous, every batch sampled by the "
                                      "version it trains")
    is_cap: float = Field(2.0, gt=0, description="truncated importance weights: min(pi_now / pi_behaviour, is_cap) per "
                          "token of a completion an older version sampled")


class Config(Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    init_from: str | None = Field(None, description="start from another run: RUN_DIR (its final model) or "
                                  "RUN_DIR/checkpoints/step-N; relative to the current directory, like run.dir")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the model to train")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="a LoRA adapter instead of training every weight")
    data: DataConfig = Field(default_factory=DataConfig, description="training and validation files")
    grader: dict[str, Any] | str = Field(
        default_factory=lambda: {"type": "answer_match"},
        description="scores each completion: a grader object ({type: string_check, ...}, docs/GRADERS.md), a type "
        "name, or a YAML/JSON file holding one grader object (relative to the config file; on the command line, to "
        "the current directory)",
    )
    grading: GradingConfig = Field(default_factory=GradingConfig, description="the grader executor: deadlines and concurrency")
    environment: dict[str, Any] | None = Field(
        None, description="multi-turn episodes instead of one answer per prompt: {type: tools, tools: tools.py, "
        "max_turns: 4, ...} or {type: user_simulator, ...} (docs/AGENTS.md; files relative to the config file)")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="sampling completions (grpo, rejection_sampling)")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="the training algorithm and GRPO's loss")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="sft (and rejection_sampling's SFT steps): packing")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="dpo: the preference loss")
    kto: KTOConfig = Field(default_factory=KTOConfig, description="kto: the loss on unpaired good/bad examples")
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig, description="reward_model: the Bradley-Terry loss")
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig, description="reasoning models: thinking "
                                       "blocks, effort, budgets (docs/REASONING.md)")
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="grpo: an SFT loss on an older skill's data "
                                 "in every update, against forgetting")
    rejection_sampling: RejectionSamplingConfig = Field(default_factory=RejectionSamplingConfig,
                                                        description="rejection_sampling: rounds and what is kept")
    asft: ASFTConfig = Field(default_factory=ASFTConfig, description="asft: advantage weights of logged answers")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the optimizer, the number of steps and the batch shape")
    run: RunConfig = Field(default_factory=RunConfig, description="the run directory: checkpoints, samples, validation, loggers")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="where rollouts and grading run: this "
                                   "process or Ray workers")
    async_: AsyncConfig = Field(default_factory=AsyncConfig, alias="async", description="asynchronous training: "
                                "generation runs ahead of the learner by a bounded number of versions")

    @field_validator("grader", mode="before")
    @classmethod
    def _grader_file(cls, value: Any) -> Any:
        # A file named here came from the command line or from Python (the loader has already loaded the
        # one a YAML file names, relative to that file), so it is relative to the current directory.
        return grader_from_file(value, Path())

    @model_validator(mode="after")
    def _credit(self) -> Config:
        if self.algorithm.credit == "turn" and not self.environment:
            raise ValueError("algorithm.credit: turn needs an `environment:` (turns exist only in multi-turn episodes)")
        return self

    @model_validator(mode="after")
    def _mixture_and_replay(self) -> Config:
        if isinstance(self.data.train, list) and self.algorithm.name not in ("grpo", "rejection_sampling"):
            raise ValueError(f"data.train as a list of sources (a mixture) needs algorithm.name grpo or "
                             f"rejection_sampling (got {self.algorithm.name}); give {self.algorithm.name} one file")
        if self.replay.path and (self.algorithm.name != "grpo" or self.runtime.learners > 1):
            raise ValueError("replay.path needs algorithm.name: grpo with one learner (runtime.learners: 1)")
        return self

    @model_validator(mode="after")
    def _learners(self) -> Config:
        if self.runtime.learners > 1 and (self.runtime.backend != "ray" or self.algorithm.name != "grpo"):
            raise ValueError("runtime.learners > 1 needs runtime.backend: ray and algorithm.name: grpo "
                             "(the offline stages train in one learner)")
        return self

    @model_validator(mode="after")
    def _batch_shape(self) -> Config:
        rows = self.train.prompts_per_step * self.rollout.num_generations
        if self.algorithm.name == "grpo" and rows % self.train.micro_batch_size and self.train.micro_batch_size < rows:
            raise ValueError(
                f"train.prompts_per_step * rollout.num_generations must be divisible by train.micro_batch_size "
                f"(got {self.train.prompts_per_step} * {self.rollout.num_generations} = {rows} rows, micro_batch_size "
                f"{self.train.micro_batch_size})"
            )
        return self

    @model_validator(mode="after")
    def _async(self) -> Config:
        k = self.async_.max_off_policy_steps
        if k and (self.runtime.backend != "ray" or self.algorithm.name != "grpo" or self.environment):
            raise ValueError("async.max_off_policy_steps > 0 needs runtime.backend: ray and algorithm.name: grpo, "
                             "without an environment (generation runs ahead in the rollout workers)")
        if isinstance(self.grader, dict) and self.grader.get("deferred") and not k:
            raise ValueError("grader.deferred: true needs asynchronous training: set async.max_off_policy_steps (the "
                             "most policy versions a reward may arrive late) and runtime.backend: ray")
        return self

    def model_dump(self, **kwargs):  # `async` (a Python keyword) is the section's name in YAML and on the command line
        kwargs.setdefault("by_alias", True)
        return super().model_dump(**kwargs)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def describe_config(cfg: Config) -> str:
    """`rft config show`: the config as YAML, every key commented with its meaning, and its default where it differs.

        train:  # the optimizer, the number of steps and the batch shape
          steps: 3               # default 100; training steps of the run ...
          prompts_per_step: 16   # prompts per step, each a group of ...

    The text is the config itself (valid YAML), so it can be saved as a starting config file.
    """
    lines = ["# every key with its meaning; `default X` marks a value that differs from its default"]
    _describe(cfg, lines, "")
    return "\n".join(lines)


def _describe(model: BaseModel, lines: list[str], indent: str) -> None:
    """Append `model`'s keys to `lines`: a section as a header and its keys below it, comments aligned per block."""
    block: list[tuple[str, str]] = []  # (key: value, comment) of consecutive plain keys

    def flush() -> None:
        width = min(max((len(text) for text, _ in block), default=0), 40)
        lines.extend(f"{text.ljust(width)}  # {comment}" for text, comment in block)
        block.clear()

    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            flush()
            lines.append(f"{indent}{field.alias or name}:  # {field.description}")
            _describe(value, lines, indent + "  ")
            continue
        default = field.get_default(call_default_factory=True)
        comment = field.description if value == default else f"default {_flow(default)}; {field.description}"
        block.append((f"{indent}{name}: {_flow(value)}", comment))
    flush()


def _flow(value: Any) -> str:
    """One value as one line of YAML (a grader object as {type: ..., ...}; a mixture's sources as a list of mappings)."""
    if isinstance(value, list):
        value = [v.model_dump(exclude_defaults=True) if isinstance(v, BaseModel) else v for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False).strip()
    return text.removesuffix("...").strip()  # a bare scalar document ends with `...`


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`a.b=1 c=x` -> {"a": {"b": 1}, "c": "x"}; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not key=value (e.g. train.steps=50)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolve_paths(data: dict, root: Path) -> None:
    """Make data files and local model folders in a YAML file relative to that file."""
    for section, key in (("data", "train"), ("data", "val"), ("model", "path"), ("replay", "path")):
        value = (data.get(section) or {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and not value.startswith("bundled:") and not Path(value).is_absolute():
            candidate = root / value
            if section != "model" or candidate.exists():
                data[section][key] = str(candidate)
    sources = (data.get("data") or {}).get("train") if isinstance(data.get("data"), dict) else None
    for source in sources if isinstance(sources, list) else []:  # a mixture: each source's files
        if not isinstance(source, dict):
            continue
        for key in ("path", "val"):
            if isinstance(source.get(key), str) and not Path(source[key]).is_absolute():
                source[key] = str(root / source[key])
        if isinstance(source.get("grader"), str):
            source["grader"] = grader_from_file(source["grader"], root)
        elif isinstance(source.get("grader"), dict):
            from rftkit.graders.base import resolve_grader_paths

            source["grader"] = resolve_grader_paths(source["grader"], root)
    if isinstance(data.get("grader"), str):  # loaded here, before the merge, so `grader.KEY=` overrides edit it
        data["grader"] = grader_from_file(data["grader"], root)
    elif isinstance(data.get("grader"), dict):
        from rftkit.graders.base import resolve_grader_paths

        data["grader"] = resolve_grader_paths(data["grader"], root)
    if isinstance(data.get("environment"), dict):
        from rftkit.agents.environment import resolve_paths

        data["environment"] = resolve_paths(data["environment"], root)


GRADER_FILE_SUFFIXES = (".yaml", ".yml", ".json")  # as rftkit.graders.load_grader_spec reads them


def grader_from_file(value: Any, root: Path) -> Any:
    """A grader named as a YAML/JSON file (relative to `root`) -> the grader object it holds; anything else as is.

    The file's own file options (a `reward_function`'s `path`, a `json_schema`'s `schema_file`) become
    relative to the grader file. The config then holds the grader object itself, so the config printed
    and saved as RUN_DIR/config.yaml (what --resume reads) no longer needs the grader file.
    """
    if not isinstance(value, str) or Path(value).suffix.lower() not in GRADER_FILE_SUFFIXES:
        return value  # a grader object, or a type name (checked when the grader is built)
    from rftkit.graders.base import load_grader_spec

    path = root / value  # an absolute value stays as it is
    if not path.is_file():
        raise ConfigError(f"grader: grader file not found: {path} (a path in a config file is relative to that "
                          "file's folder; on the command line, to the current directory)")
    try:
        spec = load_grader_spec(str(path))
    except UserError as exc:  # not valid YAML/JSON
        raise ConfigError(f"grader: {exc}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"grader: {path} must hold one grader object, a mapping with a `type` "
                          f"(got a {type(spec).__name__})")
    return spec


def _format_validation(exc: ValidationError) -> str:
    rows = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            rows.append(f"{where}: unknown key (check the spelling; `rft config show` lists every section and key)")
        else:
            rows.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(rows)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise UserError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections (model:, data:, train:, ...)")
        _resolve_paths(data, path.resolve().parent)
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc)) from None
