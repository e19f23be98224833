"""`omnirrm synth`: Omni-Preference-style training data, built automatically (docs/ARCHITECTURE.md, README).

Stages, one module each, every one resumable from what it wrote under the run's `out_dir`:
  sources     prompts from RLAIF-V-style image JSON, video JSON lists, Clotho-AQA CSV and generic JSONL; dedupe, caps
  candidates  answers from a strong and a weak checkpoint with the jitted engine (`bon.candidates.generate_texts`)
  teachers    two teachers over an OpenAI-compatible chat API: the reference's annotation prompt (media in
              `media_parts`, replies mended by `repair`, answers kept in the append-only `cache`)
  consensus   keep a pair when both teachers give the same non-tie verdict that their own scores agree with
  output      ms-swift JSONL for SFT and GRPO, ready for `omnirrm prep`, and synth_report.json
`run` chains them; `config` reads the YAML.
"""
