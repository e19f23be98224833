"""`omnirrm serve`: the judge as an HTTP service (OpenAI-compatible chat, /v1/judge, /v1/reward) for RL trainers
and data pipelines. One module per job: `schemas` (request bodies), `inputs` (requests -> prepared examples, host
side), `runner` (batches on the device, warm-up), `engine` (the dynamic batcher: one worker thread owns the device),
`metrics` (Prometheus), `app` (routes, auth, errors)."""
