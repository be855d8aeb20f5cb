"""The `rft` command: parses arguments and dispatches to the library. No logic lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.text import Text

from rftkit.errors import UserError
from rftkit.server.commands import models_app, serve, server_app  # FastAPI loads only when one of them runs

app = typer.Typer(help="rftkit: reinforcement fine-tuning for language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Check and inspect JSONL datasets.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate models: pass@k and mean reward.", no_args_is_help=True)
grader_app = typer.Typer(help="Try and check graders without a model.", no_args_is_help=True)
env_app = typer.Typer(help="Try and check multi-turn environments (tools, simulated users) without a model.",
                      no_args_is_help=True)
config_app = typer.Typer(help="Show run configs: every key with its value, default and meaning.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(grader_app, name="grader")
app.add_typer(config_app, name="config")
app.add_typer(env_app, name="env")
app.add_typer(server_app, name="server")
app.add_typer(models_app, name="models")
app.command("serve")(serve)
err = Console(stderr=True, soft_wrap=True)

# Options shared by the `rft eval` commands: defined once so their names, defaults and help agree.
ModelOpt = Annotated[str, typer.Option("--model", help="HF folder, run's final/ folder, hub id or bundled:NAME")]
GraderOpt = Annotated[str, typer.Option("--grader", help="grader type or YAML/JSON file with one grader object")]
OutOpt = Annotated[Path, typer.Option("--out", help="write the result JSON here")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0.0)]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1)]
SeedOpt = Annotated[int, typer.Option("--seed")]
DeviceOpt = Annotated[str, typer.Option("--device")]
EnvOpt = Annotated[Path, typer.Option("--env", help="multi-turn episodes: a YAML file with an `environment:` mapping "
                                                    "(as `rft env run` takes); the grader is still --grader")]  # long paths and commands stay copy-pasteable
out = Console()


@app.command(context_settings={"allow_extra_args": False})
def train(
    args: list[str] = typer.Argument(None, help="CONFIG.yaml, then key=value overrides (e.g. train.steps=50)"),
    resume: Path = typer.Option(None, "--resume", help="continue the run in this directory from its last checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar; a line every ~5% of the run"),
) -> None:
    """Train (algorithm.name: grpo, sft, dpo, reward_model, rejection_sampling, asft); checkpoints and metrics go to run.dir.

    Every config key, its default and its meaning: `rft config show CONFIG key=value ...`."""
    from rftkit.config import load_config
    from rftkit.train.loop import Trainer

    args = list(args or [])
    config_path = args.pop(0) if args and "=" not in args[0] else None
    if config_path is None and resume is not None and (resume / "config.yaml").exists():
        config_path = str(resume / "config.yaml")
    if resume is not None:
        args.append(f"run.dir={resume}")
    cfg = load_config(config_path, args)
    final = Trainer(cfg, err, quiet).train(resume=resume is not None)
    out.print(str(final))


@config_app.command("show")
def config_show(
    args: list[str] = typer.Argument(None, help="CONFIG.yaml (default: none, the defaults), then key=value overrides"),
) -> None:
    """Print the resolved config, as `rft train` would run it: every section and key with its meaning and default."""
    from rftkit.config import describe_config, load_config

    args = list(args or [])
    config_path = args.pop(0) if args and "=" not in args[0] else None
    out.print(describe_config(load_config(config_path, args)), highlight=False, markup=False, soft_wrap=True)


@data_app.command("validate")
def data_validate(
    file: Path = typer.Argument(..., help="JSONL file of Items, parquet file (verl's layout) or Hugging Face dataset "
                                          "folder (FOLDER:SPLIT for one split of a DatasetDict)"),
    grader: str = typer.Option(None, "--grader", help="grader type or YAML/JSON file; checks reference_answer if it needs one"),
    require_reference: bool = typer.Option(False, "--require-reference", help="every line must have a reference_answer"),
    fmt: Literal["auto", "jsonl", "parquet", "hf"] = typer.Option(
        "auto", "--format", help="auto: parquet for .parquet, hf for a folder, else jsonl"),
    columns: list[str] = typer.Option(None, "--columns", help="parquet/hf column mapping: key=column (repeatable) or a "
                                                              "JSON object, e.g. prompt=question reference_answer=answer"),
    split: str = typer.Option(None, "--split", help="the split of a Hugging Face DatasetDict (default: train)"),
) -> None:
    """Report every bad line (row) of a dataset with its number; exit 1 if any. Keeps no items: any size validates."""
    from rftkit.data import format_report
    from rftkit.data.loaders import parse_columns, validate_source
    from rftkit.graders import build_grader, load_grader_spec

    if grader:
        require_reference = require_reference or build_grader(load_grader_spec(grader), "--grader").needs_reference
    report = validate_source(file, fmt=fmt, columns=parse_columns(columns), split=split,
                             require_reference=require_reference)
    text = format_report(report)
    (out if report.ok else err).print(text, highlight=False, markup=False, soft_wrap=True)  # FILE:N: rows stay whole
    raise typer.Exit(0 if report.ok else 1)


@data_app.command("from-logs")
def data_from_logs(
    path: Annotated[Path, typer.Argument(help="a log file (.json/.jsonl/.log, or gzipped .gz) or a directory of them")],
    out_file: Annotated[Path, typer.Option("--out", help="the JSONL file of Items to write")],
    fmt: Annotated[Literal["auto", "bedrock", "openai"], typer.Option("--format", help="auto: per record")] = "auto",
    model: Annotated[list[str], typer.Option("--model", help="keep calls to this model (id, glob); repeatable")] = None,
    since: Annotated[str, typer.Option("--since", help="keep calls at or after this ISO date or datetime")] = None,
    until: Annotated[str, typer.Option("--until", help="keep calls at or before this ISO date(time)")] = None,
    dedupe: Annotated[bool, typer.Option("--dedupe/--no-dedupe", help="drop prompts seen before")] = True,
    last_user_turn: Annotated[bool, typer.Option("--last-user-turn", help="only the system and last user turn")] = False,
    responses: Annotated[Literal["none", "reference", "asft"], typer.Option(
        "--responses", help="the logged answer as reference_answer, not at all, or as A-SFT rows")] = "reference",
    kto_out: Annotated[Path, typer.Option("--kto-out", help="also write KTO rows from records with feedback")] = None,
    report_file: Annotated[Path, typer.Option("--report", help="write the counts and every dropped line here")] = None,
) -> None:
    """Logged model calls (Bedrock invocation logs, OpenAI chat-completions logs) -> RFT prompts (docs/DATA.md)."""
    from rftkit.data import logs

    options = logs.FromLogsOptions(fmt, model or [], since, until, dedupe, last_user_turn, responses, kto_out,
                                   report_file)
    result = logs.from_logs(path, out_file, options)
    if result.shown:
        err.print(logs.format_drops(result, report_file), highlight=False, markup=False, soft_wrap=True)
    out.print(logs.format_summary(result, kto_out), highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(0 if result.kept else 1)


GraderArg = Annotated[str, typer.Argument(help="YAML/JSON file holding one grader object (or a built-in type name)")]


@grader_app.command("run")
def grader_run(
    grader: GraderArg,
    item: Annotated[Path, typer.Option("--item", help="JSON file with one item (or a JSONL file: its first row)")],
    output: Annotated[str, typer.Option("--output", help="the model's answer to grade ('-' reads stdin)")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object: reward, sub_rewards, errors, latency_s")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="deadline of the call in seconds")] = 30.0,
    reasoning: Annotated[bool, typer.Option("--reasoning", help="split the output into thinking and answer as a "
                                            "reasoning.enabled run does; the grader scores the answer")] = False,
    open_tag: Annotated[str, typer.Option("--open-tag", help="with --reasoning: the tag opening a thinking block")] = "<think>",
    close_tag: Annotated[str, typer.Option("--close-tag", help="with --reasoning: the tag closing it")] = "</think>",
) -> None:
    """Grade one answer: print the reward, sub-rewards, error flags and latency."""
    from rftkit.graders import tool
    from rftkit.rollout.thinking import split_thinking

    text = sys.stdin.read() if output == "-" else output
    split = split_thinking(text, open_tag, close_tag) if reasoning else None
    result = tool.run(grader, tool.read_item(item), text, timeout, split)
    if as_json:
        out.print_json(json.dumps(result))
        return
    if split is not None:
        out.print(f"thinking ({split.status}): {split.reasoning}", highlight=False, markup=False, soft_wrap=True)
        out.print(f"answer: {split.answer}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"reward: {result['reward']}", highlight=False)
    for name, value in result["sub_rewards"].items():
        out.print(f"  {name}: {value}", highlight=False, markup=False)
    for error in result["errors"]:
        out.print(f"error: {error}", highlight=False, markup=False)
    out.print(f"latency: {result['latency_s'] * 1000:.1f} ms", highlight=False)


@grader_app.command("capabilities")
def grader_capabilities(
    as_json: Annotated[bool, typer.Option("--json", help="print the raw capabilities object")] = False,
) -> None:
    """Which sandbox layers are active on this host, for the `python` and `code` graders."""
    from rftkit.graders import sandbox

    caps = sandbox.capabilities()
    if as_json:
        out.print_json(json.dumps(caps))
        return
    rows = sandbox.describe_capabilities(caps)
    width = max(len(layer) for layer, _, _ in rows)
    for layer, active, text in rows:
        out.print(f"{'on ' if active else 'off'}  {layer:<{width}}  {text}", highlight=False, markup=False,
                  soft_wrap=True)
    off = [layer for layer, active, _ in rows if not active and layer != "subreaper"]
    running = "root" if caps.get("root") else "not root" + (" (user namespace)" if caps.get("user_namespace") else "")
    out.print(f"running as {running}; " + (f"off here: {', '.join(off)} - docs/GRADERS.md says what holds without "
                                            f"them" if off else "every layer is on"), highlight=False, markup=False, soft_wrap=True)


@grader_app.command("validate")
def grader_validate(
    grader: GraderArg,
    item: Annotated[Path, typer.Option("--item", help="also check template variables against this item (JSON/JSONL)")] = None,
) -> None:
    """Check a grader config without a model: types, operations, templates, formula, python source."""
    from rftkit.graders import tool

    problems = tool.validate(grader, tool.read_item(item) if item else None)
    if problems:
        err.print("\n".join(f"error: {p}" for p in problems), highlight=False, markup=False)
        raise typer.Exit(2)
    out.print(f"ok: {grader}" + ("" if item else " (pass --item to check template variables against a data row)"),
              highlight=False, markup=False)
    out.print("\n".join(tool.describe(tool.load_grader(grader))), highlight=False, markup=False)


EnvArg = Annotated[Path, typer.Argument(help="YAML file with an `environment:` mapping (as in a run config) and "
                                       "optionally a `grader:`")]


@env_app.command("run")
def env_run(
    env_file: EnvArg,
    item: Annotated[Path, typer.Option("--item", help="JSON file with one item (or a JSONL file: its first row)")],
    assistant: Annotated[Path, typer.Option("--assistant", help="JSON list of the assistant's raw turns (tool calls "
                                                                "as <tool_call>{json}</tool_call>)")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object: messages, reward, turn_rewards, "
                                                         "finish_reason, errors")] = False,
) -> None:
    """Play one episode with scripted assistant turns: every message, the reward, cut reasons and errors."""
    from rftkit.agents import envfile
    from rftkit.graders import tool

    result = envfile.run(env_file, tool.read_item(item), envfile.read_turns(assistant))
    if as_json:
        out.print_json(json.dumps(result))
        return
    for message in result["messages"]:
        calls = "".join(f"\n  -> {c['function']['name']}({c['function']['arguments']})" for c in message.get("tool_calls") or [])
        out.print(f"[{message['role']}] {message.get('content') or ''}{calls}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"reward: {result['reward']}" + (f" ({result['grader_error']})" if result["grader_error"] else ""),
              highlight=False, markup=False, soft_wrap=True)
    out.print(f"turn rewards: {result['turn_rewards']}", highlight=False, soft_wrap=True)
    out.print(f"finish: {result['finish_reason']}; " + ", ".join(f"{k} {v}" for k, v in result["counts"].items()),
              highlight=False, soft_wrap=True)
    for error in result["errors"]:
        out.print(f"error: {error}", highlight=False, markup=False, soft_wrap=True)


@env_app.command("validate")
def env_validate(env_file: EnvArg) -> None:
    """Check an environment file without a model: its type, options, tools file (syntax, schemas) and grader."""
    from rftkit.agents import envfile

    env, grader = envfile.load_env_file(env_file)
    out.print(f"ok: {env_file}", highlight=False, markup=False, soft_wrap=True)
    out.print("\n".join(envfile.describe(env)), highlight=False, markup=False, soft_wrap=True)
    if grader is not None:
        out.print(f"grader: {getattr(grader, 'name', type(grader).__name__)}", highlight=False, markup=False, soft_wrap=True)


@eval_app.command("run")
def eval_run(
    model: ModelOpt = "bundled:tiny-arith",
    data: Path = typer.Option(..., "--data", help="Items: JSONL, parquet (verl layout) or a Hugging Face dataset folder"),
    grader: GraderOpt = "answer_match",
    samples: int = typer.Option(8, "--samples", "-k", min=1, help="completions per item (K of pass@K)"),
    out_file: OutOpt = None,
    temperature: TemperatureOpt = 1.0,
    max_new_tokens: MaxNewTokensOpt = 48,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    env: EnvOpt = None,
) -> None:
    """pass@1, pass@K (unbiased estimator) and mean reward of a model on a dataset."""
    from rftkit.eval.run import run_eval
    from rftkit.graders import load_grader_spec

    result = run_eval(model, str(data), load_grader_spec(grader), samples, temperature, max_new_tokens, seed, device,
                      out=out_file, environment=_environment(env))
    out.print(json.dumps(result, indent=2), highlight=False)


@eval_app.command("baseline")
def eval_baseline(
    model: ModelOpt = "bundled:tiny-arith",
    data: Path = typer.Option(..., "--data", help="Items (JSONL, parquet, HF dataset folder): the training prompts, or a sample of them"),
    grader: GraderOpt = "answer_match",
    n: int = typer.Option(8, "-n", "--samples", min=2, help="attempts per prompt (use the run's num_generations)"),
    out_file: OutOpt = None,
    temperature: TemperatureOpt = 1.0,
    max_new_tokens: MaxNewTokensOpt = 48,
    min_any_success: float = typer.Option(0.2, "--min-any-success", help="below this share of prompts with any success: sft_first"),
    max_all_pass: float = typer.Option(0.8, "--max-all-pass", help="above this share of always-solved prompts: too_easy"),
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    env: EnvOpt = None,
) -> None:
    """Readiness check before RFT: pass@1, pass@k, outcome shares and a verdict (ready / sft_first / too_easy)."""
    from rftkit.eval.baseline import baseline_report
    from rftkit.eval.run import sample_and_grade, write_json
    from rftkit.graders import load_grader_spec

    groups = sample_and_grade(model, str(data), load_grader_spec(grader), n, temperature, max_new_tokens, seed, device,
                              environment=_environment(env))
    result = {**baseline_report(groups, n, min_any_success, max_all_pass), "model": model, "data": str(data)}
    write_json(result, out_file)
    out.print(f"pass@1 {result['pass@1']:.3f}   pass@{n} {result['pass@k']:.3f}   reward {result['reward_mean']:.3f}", highlight=False)
    out.print(f"prompts: {100 * result['share_all_fail']:.0f}% all fail, {100 * result['share_mixed']:.0f}% mixed, "
              f"{100 * result['share_all_pass']:.0f}% all pass", highlight=False)
    out.print(Text.assemble(("verdict: ", "bold"), (result["verdict"], "bold green" if result["verdict"] == "ready" else "bold yellow"),
                            f" - {result['reason']}"))


@eval_app.command("compare")
def eval_compare(
    base: str = typer.Option(..., "--base", help="the model before tuning"),
    tuned: str = typer.Option(..., "--tuned", help="the tuned model (e.g. RUN_DIR/final)"),
    data: Path = typer.Option(..., "--data", help="held-out Items (JSONL, parquet, HF dataset folder)"),
    grader: GraderOpt = "answer_match",
    n: int = typer.Option(8, "-n", "--samples", min=1, help="completions per item and model"),
    out_file: OutOpt = None,
    markdown: Path = typer.Option(None, "--markdown", help="write a Markdown summary here"),
    temperature: TemperatureOpt = 1.0,
    max_new_tokens: MaxNewTokensOpt = 48,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    env: EnvOpt = None,
) -> None:
    """Tuned vs base on the same items: deltas with 95% bootstrap intervals, wins/losses/ties, flipped examples."""
    from rftkit.eval.compare import compare_groups, to_markdown
    from rftkit.eval.run import sample_and_grade, write_json
    from rftkit.graders import load_grader_spec

    spec = load_grader_spec(grader)
    environment = _environment(env)
    base_groups = sample_and_grade(base, str(data), spec, n, temperature, max_new_tokens, seed, device,
                                   environment=environment)
    tuned_groups = sample_and_grade(tuned, str(data), spec, n, temperature, max_new_tokens, seed, device,
                                    environment=environment)
    result = {**compare_groups(base_groups, tuned_groups, n), "base": base, "tuned": tuned, "data": str(data)}
    write_json(result, out_file)
    text = to_markdown(result, base, tuned)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text + "\n")
    out.print(text, highlight=False, markup=False)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a run directory (holds metrics.jsonl)"),
    out_file: Path = typer.Option(None, "--out", help="default: RUN_DIR/report.html"),
) -> None:
    """Write RUN_DIR/report.html: one self-contained page of plots, health warnings and sampled rollouts."""
    from rftkit.report import write_report

    if not (run_dir / "metrics.jsonl").exists():
        raise UserError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    out.print(str(write_report(run_dir, out_file)))


@app.command()
def demo(
    out_dir: Path = typer.Option(None, "--out", help="demo directory (default: runs/demo, or the next free runs/demo-N)"),
    config: Path = typer.Option(None, "--config", help="GRPO config (default: examples/TASK/grpo.yaml)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar; a line every ~5% of the run"),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="config overrides, e.g. train.steps=20"),
    task: str = typer.Option("arithmetic", "--task", help="arithmetic (tiny-arith) or tools (tiny-tools: multi-turn "
                                                         "tool calls, docs/AGENTS.md)"),
) -> None:
    """Baseline eval of the bundled model -> GRPO training -> eval of the trained model -> before/after table."""
    from rftkit.demo import run_demo

    run_demo(out_dir, config, err, quiet, overrides or [], task=task)


def _environment(path: Path | None):
    """The checked environment of an env file (--env), before any model loads; None without one."""
    if path is None:
        return None
    from rftkit.agents import envfile

    return envfile.load_env_file(path)[0]


def main() -> None:
    try:
        app()
    except UserError as exc:
        err.print(Text.assemble(("error: ", "bold red"), str(exc)))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
