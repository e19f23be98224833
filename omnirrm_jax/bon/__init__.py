"""Best-of-N with the judge (`omnirrm bon`): draw N answers per question from a policy, pick one with the judge, and
measure accuracy against N per selection strategy, beside the published curves.

One job per module:
  items       readers for the three released Best-of-N files (MMMU, Video-MME, AVQA) -> `BonItem`s, with the
              reference's quirks as switchable options
  answers     the policy's multiple-choice prompt and the reference's parsing of its answer (pure Python)
  candidates  N sampled answers per question from a policy checkpoint (one prefill per prompt, G = N samples)
  scorers     "judge a pair": the reference's {"better": ...} verdict (greedy) or the scalar P(A) - P(B) read at the
              verdict token (one teacher-forced pass, no generation)
  strategies  "select": elimination, tournament, knockout, reward, reward_ref, first, majority, oracle
  run         every strategy over the items, accuracy for each N, judge calls and wall time
  report      markdown + JSON table and the PNG plot beside the published numbers
  reward      `omnirrm_jax.reward(...)`: the scalar reward for other trainers (no files)
"""
