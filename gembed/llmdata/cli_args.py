"""The command-line flags the LLM data steps share (importable without Apache Beam)."""

from __future__ import annotations

from gembed.llmdata.client import LLMConfig


def add_llm_arguments(parser, required: bool = True):
  """The flags every LLM step shares."""
  g = parser.add_argument_group("LLM endpoint (OpenAI-compatible chat/completions)")
  g.add_argument("--llm-base-url", required=required, help="e.g. http://localhost:8000/v1 (vLLM), "
                 "http://localhost:11434/v1 (Ollama), "
                 "https://generativelanguage.googleapis.com/v1beta/openai (Gemini)")
  g.add_argument("--llm-model", required=required, help="model name the endpoint serves")
  g.add_argument("--llm-api-key-env", default="OPENAI_API_KEY",
                 help="environment variable holding the API key (the key itself is never a flag)")
  g.add_argument("--llm-cache", default="", help="response cache: a folder, shared filesystem or "
                 "gs:// path (default: OUTPUT.llm-cache beside the output)")
  g.add_argument("--llm-concurrency", type=int, default=8)
  g.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per request")
  g.add_argument("--llm-max-retries", type=int, default=6)
  g.add_argument("--llm-temperature", type=float, default=None,
                 help="default: 0 for judging, 1 for generation")


def llm_config_from_args(args, default_temperature: float = 0.0) -> LLMConfig:
  temperature = args.llm_temperature if args.llm_temperature is not None else default_temperature
  return LLMConfig(base_url=args.llm_base_url, model=args.llm_model,
                   api_key_env=args.llm_api_key_env,
                   cache_dir=args.llm_cache or f"{args.output}.llm-cache",
                   concurrency=args.llm_concurrency, timeout_s=args.llm_timeout,
                   max_retries=args.llm_max_retries, temperature=temperature)


def add_beam_arguments(parser):
  g = parser.add_argument_group("Apache Beam (pip install -e '.[beam]')")
  g.add_argument("--beam", action="store_true", help="run as a Beam pipeline")
  g.add_argument("--runner", default="DirectRunner",
                 help="DirectRunner (local), DataflowRunner, FlinkRunner, SparkRunner, ...")
  g.add_argument("--beam-options", default="", help="more pipeline options, e.g. '--project=P "
                 "--region=R --temp_location=gs://B/tmp' for Dataflow")
  g.add_argument("--num-shards", type=int, default=1, help="output files (1: exactly --output)")
  g.add_argument("--llm-batch", type=int, default=64, help="items per LLM batch in a worker")
  g.add_argument("--block-size", type=int, default=16384,
                 help="mine: corpus embeddings per block streamed past each query batch")


def beam_pipeline_module():
  """gembed.llmdata.beam_pipeline, or a clear error when the `beam` extra is not installed."""
  try:
    from gembed.llmdata import beam_pipeline
  except ImportError as e:
    raise ValueError(f"--beam needs Apache Beam: pip install -e '.[beam]' ({e})") from None
  return beam_pipeline
