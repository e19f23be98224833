"""Reference GRPO reward classes MMFormatORM, MMContentORM, MMRubricORM (test oracle).

Copied verbatim from the published Omni-RRM code, https://github.com/tmfk418/Omni-RRM at commit
c35c32bde34ed37c4a0862c16c54bc6d0d83f882; only the changes listed below were made. Used by the tests as the oracle that
omnirrm_jax.rubric must match exactly. Not part of the package.

Source: train/new_plugin.py, the three classes (with the `Rule` dataclass) exactly as published.
Changes: the ms-swift imports (`from swift.plugin import ORM, orms, ...`, `get_logger`) and the
`orms[...] = ...` registrations are replaced by the stand-in `ORM` base below, so the classes run
without ms-swift. The scoring code itself is untouched.
"""
# ruff: noqa
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List


class ORM:  # stand-in for swift.plugin.ORM, whose subclasses here never call its __init__
    pass


# ------------------ New MMFormatORM for multimodal tasks ------------------
@dataclass
class Rule:
    name: str
    weight: float
    check: Callable[[Any, dict | None], bool]

class MMFormatORM(ORM):
    """
    Format reward for multimodal preference-alignment tasks.

    Expected model output is a JSON object:
      - "score_A","score_B": int 0-10
      - "better": "A" | "B" | "equal"
      - "reasoning": string, wrapped in <think>...</think>
      - "final_verdict": in the form <answer>[[A|B|equal]]</answer>
    """

    # Required keys
    REQUIRED_KEYS = {"score_A", "score_B", "better", "reasoning", "final_verdict"}

    def __init__(self, weights: Dict[str, float] | None = None):
        self.weights = weights or {
            "json_valid":    0.20,
            "required_keys": 0.20,
            "field_values":  0.15,
            "reasoning_tag": 0.15,
            "verdict_tag":   0.15,
            "consistency":   0.15,
        }
        total = sum(self.weights.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"Weights must sum to 1 (got {total})")

        # More tolerant but precise regex (supports multiline)
        self.RE_THINK   = re.compile(r"<think>[\s\S]*?</think>", re.DOTALL)
        self.RE_VERDICT = re.compile(r"<answer>\[\[(A|B|equal)\]\]</answer>")

        self.rules: List[Rule] = [
            Rule("json_valid",    self.weights["json_valid"],    self._json_valid),
            Rule("required_keys", self.weights["required_keys"], self._required_keys),
            Rule("field_values",  self.weights["field_values"],  self._field_values),
            Rule("reasoning_tag", self.weights["reasoning_tag"], self._reasoning_tag),
            Rule("verdict_tag",   self.weights["verdict_tag"],   self._verdict_tag),
            Rule("consistency",   self.weights["consistency"],   self._consistency),
        ]

    # ---------- Unified parsing: remove code block wrappers, tolerate single-element arrays, return dict ----------
    @staticmethod
    def _parse_obj(raw: str) -> dict | None:
        # Remove ``` or ```json wrappers
        raw = re.sub(r"^```(?:json)?\s*|\s*```$", "", str(raw).strip())
        try:
            obj = json.loads(raw)
        except Exception:
            return None
        # If it's a single-element array with an object, take the first
        if isinstance(obj, list) and obj and isinstance(obj[0], dict):
            obj = obj[0]
        return obj if isinstance(obj, dict) else None

    # ---------- Rule implementations (prefer obj, parse raw only if necessary) ----------
    def _json_valid(self, raw: str, obj: dict | None = None) -> bool:
        return obj is not None

    def _required_keys(self, raw: str, obj: dict | None = None) -> bool:
        obj = obj if isinstance(obj, dict) else self._parse_obj(raw)
        return isinstance(obj, dict) and set(obj.keys()) == self.REQUIRED_KEYS

    def _field_values(self, raw: str, obj: dict | None = None) -> bool:
        obj = obj if isinstance(obj, dict) else self._parse_obj(raw)
        if not isinstance(obj, dict):
            return False
        try:
            a, b = obj["score_A"], obj["score_B"]
            if not (isinstance(a, int) and 0 <= a <= 10): return False
            if not (isinstance(b, int) and 0 <= b <= 10): return False
            if obj.get("better") not in {"A", "B", "equal"}: return False
            return True
        except Exception:
            return False

    def _reasoning_tag(self, raw: str, obj: dict | None = None) -> bool:
        obj = obj if isinstance(obj, dict) else self._parse_obj(raw)
        if not isinstance(obj, dict):
            return False
        reasoning = obj.get("reasoning", "")
        return isinstance(reasoning, str) and self.RE_THINK.match(reasoning.strip()) is not None

    def _verdict_tag(self, raw: str, obj: dict | None = None) -> bool:
        obj = obj if isinstance(obj, dict) else self._parse_obj(raw)
        if not isinstance(obj, dict):
            return False
        verdict = obj.get("final_verdict", "")
        return isinstance(verdict, str) and self.RE_VERDICT.match(verdict.strip()) is not None

    def _consistency(self, raw: str, obj: dict | None = None) -> bool:
        obj = obj if isinstance(obj, dict) else self._parse_obj(raw)
        if not isinstance(obj, dict):
            return False
        m = self.RE_VERDICT.match(str(obj.get("final_verdict", "")).strip())
        return m is not None and (m.group(1) == obj.get("better"))

    # ---------- Main entry: parse once per response, pass to all rules ----------
    def __call__(self, completions: List[str], **kwargs) -> List[float]:
        rewards: List[float] = []
        for resp in completions:
            obj = self._parse_obj(resp)
            score = 0.0
            for rule in self.rules:
                try:
                    if rule.check(resp, obj):
                        score += rule.weight
                except Exception:
                    # A single rule failure is not fatal, skip to avoid breaking training
                    pass
            rewards.append(score)
        return rewards


        
import logging
logger = logging.getLogger(__name__)

class MMContentORM(ORM):  # inherits ORM in your project if needed
    # ---------- Initialization ----------
    def __init__(self, weight_dir: float = 0.6, weight_score: float = 0.4):
        if abs(weight_dir + weight_score - 1.0) > 1e-6:
            raise ValueError("weight_dir + weight_score must equal 1")
        self.w_dir = weight_dir
        self.w_score = weight_score

    # ---------- Utilities ----------
    @staticmethod
    def _safe_int(x: Any) -> int:
        """Convert to int & clip to [0,10]"""
        try:
            v = int(x)
        except Exception:
            raise ValueError("Failed to parse score")
        return max(0, min(10, v))

    @staticmethod
    def _parse_pred(raw: str) -> Dict[str, int | str]:
        """Parse model prediction from JSON string"""
        raw = re.sub(r"^```(?:json)?\s*|\s*```$", "", raw.strip())
        try:
            obj = json.loads(raw)
        except Exception:
            raise ValueError("JSON parsing failed")

        if isinstance(obj, list) and obj and isinstance(obj[0], dict):
            obj = obj[0]
        if not isinstance(obj, dict):
            raise ValueError("Model output is not a dict")

        return {
            "score_A": MMContentORM._safe_int(obj["score_A"]),
            "score_B": MMContentORM._safe_int(obj["score_B"]),
            "better": str(obj["better"]),
        }

    @staticmethod
    def _self_consistent(sA: int, sB: int, better: str) -> bool:
        """Check if better is consistent with the scores"""
        if better == "A":
            return sA > sB
        if better == "B":
            return sB > sA
        if better == "equal":
            return sA == sB
        return False

    # ---------- Main entry ----------
    def __call__(self, completions: List[str], **kwargs) -> List[float]:
        """Evaluate content reward for a batch of completions"""
        # --------- ① Get ground-truth ---------
        try:
            gt_better = kwargs["better"]
            gt_sA = kwargs["score_A"]
            gt_sB = kwargs["score_B"]
        except KeyError as e:
            # ---------- ② Fallback: try to get fields from solution ----------
            if "solution" in kwargs:
                try:
                    sol_raw = kwargs["solution"]
                    # Some loaders may read solution as list[str]
                    if isinstance(sol_raw, list):
                        sol_raw = sol_raw[0]
                    sol = json.loads(sol_raw)
                    for k in ("better", "score_A", "score_B"):
                        kwargs[k] = sol[k]
                    gt_better = kwargs["better"]
                    gt_sA = kwargs["score_A"]
                    gt_sB = kwargs["score_B"]
                    logger.debug("[MMContentORM] Successfully filled fields from solution")
                except Exception as ee:
                    logger.error(f"[MMContentORM] Failed to parse solution: {ee}")
                    return [-1.0] * len(completions)
            else:
                logger.error(f"[MMContentORM] Missing required field: {e}")
                return [-1.0] * len(completions)

        # If single values, broadcast them into lists
        if not isinstance(gt_better, list):
            gt_better = [gt_better] * len(completions)
        if not isinstance(gt_sA, list):
            gt_sA = [gt_sA] * len(completions)
        if not isinstance(gt_sB, list):
            gt_sB = [gt_sB] * len(completions)

        rewards: List[float] = []

        # --------- ③ Compute reward for each completion ---------
        for raw, g_pref, g_a, g_b in zip(completions, gt_better, gt_sA, gt_sB):
            try:
                # ---------- Parse model output ----------
                pred = self._parse_pred(raw)
                p_a, p_b, p_pref = pred["score_A"], pred["score_B"], pred["better"]

                # ---------- (1) Self-consistency check ----------
                if not self._self_consistent(p_a, p_b, p_pref):
                    rewards.append(-1.0)
                    continue

                # ---------- (2) Direction correctness ----------
                C_dir = 1.0 if p_pref == str(g_pref) else -1.0

                # ---------- (3) Score closeness ----------
                g_a, g_b = self._safe_int(g_a), self._safe_int(g_b)
                err = (abs(p_a - g_a) + abs(p_b - g_b)) / 20.0  # ∈ [0,1]
                C_score = 1.0 - 2.0 * err                       # map to [-1,1]

                # ---------- (4) Aggregate ----------
                R = self.w_dir * C_dir + self.w_score * C_score
                rewards.append(float(max(-1.0, min(1.0, R))))
            except Exception as e:
                logger.debug(f"[MMContentORM] Parsing/calculation failed: {e}")
                rewards.append(-1.0)

        return rewards


class MMRubricORM(ORM):
    """
    Rubric-level reward for multimodal preference evaluation.
    ---------------------------------------------------------
    ①  Dimension coverage   C_cover = covered_dimensions / 5
    ②  Dimension comparison C_cmp   = compared_dimensions / 5
        ─ Explicit comparison: A and B appear in the same segment
        ─ Implicit comparison: collective terms like 'both/answers/…' + comparative words like better/worse
    ③  Dynamic gain         Δ_cmp   = max(0 , C_cmp − C_cmp_gt)
                     ( if cmp_gt not provided → Δ_cmp = C_cmp )
    Final reward:  R = w_cover·C_cover + w_cmp·Δ_cmp , range [0,1]
        Default w_cover = 0.8 , w_cmp = 0.2
    """

    # ---------- Initialization ----------
    def __init__(self, w_cover: float = 0.8, w_cmp: float = 0.2):
        if abs(w_cover + w_cmp - 1.0) > 1e-6:
            raise ValueError('w_cover + w_cmp must equal 1')
        self.wc, self.wm = w_cover, w_cmp

        # Dimension keywords
        self.dim_patterns: Dict[str, re.Pattern] = {
            'fluency':   re.compile(r'\b(fluency|coherence|flow|coherent)\b', re.I),
            'relevance': re.compile(r'\b(relevance|related|pertinent|alignment)\b', re.I),
            'accuracy':  re.compile(r'\b(accuracy|accurate|correct(ness)?|precision)\b', re.I),
            'reasoning': re.compile(r'\b(reasoning|analysis|logic(al)?|inference)\b', re.I),
            'safety':    re.compile(r'\b(safety|safe|ethical|harmless|toxic(ity)?)\b', re.I),
        }

        # A / B detection
        self.re_A = re.compile(r'(?<![A-Za-z])(?:candidate|answer|response|model|option)?\s*A(?![A-Za-z])', re.I)
        self.re_B = re.compile(r'(?<![A-Za-z])(?:candidate|answer|response|model|option)?\s*B(?![A-Za-z])', re.I)
        self.re_collective  = re.compile(r'\b(both|two|each|either|neither|all|responses?|candidates?|answers?)\b', re.I)
        self.re_comparative = re.compile(
            r'\b(better|worse|superior|inferior|preferable|outperform\w*|more\s+\w+|less\s+\w+)\b', re.I
        )

    # ---------- Utility ----------
    @staticmethod
    def _strip_think(txt: str) -> str:
        """Remove <think> tags"""
        return re.sub(r'^<think>\s*|\s*</think>$', '', txt.strip(), flags=re.I)

    # ---------- Main entry ----------
    def __call__(self, completions: List[str], **kwargs) -> List[float]:
        cmp_gt_val = None
        if 'cmp_gt' in kwargs:
            try:
                cmp_gt_val = max(0.0, min(1.0, float(kwargs['cmp_gt'])))
            except Exception:
                cmp_gt_val = None

        rewards: List[float] = []

        for raw in completions:
            # ---------- Extract reasoning ----------
            try:
                obj = json.loads(raw)
                reasoning = self._strip_think(obj.get('reasoning', ''))
            except Exception as e:
                logger.debug(f'[Rubric] JSON parse error: {e}')
                rewards.append(-1.0)
                continue

            cover_hit, cmp_hit = 0, 0   # number of covered dimensions / number of compared dimensions

            # ---------- Iterate over 5 dimensions ----------
            for dim, rg in self.dim_patterns.items():
                # Find the first occurrence of this dimension
                m = rg.search(reasoning)
                if not m:
                    continue  # this dimension not covered

                cover_hit += 1
                start = m.start()

                # Calculate the end of this dimension segment = min start of next dimension
                next_positions = []
                for other_rg in self.dim_patterns.values():
                    if other_rg is rg:
                        continue
                    m2 = other_rg.search(reasoning, start + 1)
                    if m2:
                        next_positions.append(m2.start())
                end = min(next_positions) if next_positions else len(reasoning)
                segment = reasoning[start:end]

                # ---------- Comparison detection ----------
                explicit  = self.re_A.search(segment) and self.re_B.search(segment)
                implicit  = self.re_collective.search(segment) and self.re_comparative.search(segment)
                if explicit or implicit:
                    cmp_hit += 1

            # ---------- Compute scores ----------
            C_cover = cover_hit / 5.0
            C_cmp   = cmp_hit   / 5.0

            # Dynamic gain: reward only if "better than GT"
            if cmp_gt_val is not None:
                cmp_gain = max(0.0, C_cmp - cmp_gt_val)
            else:
                cmp_gain = C_cmp

            reward = self.wc * C_cover + self.wm * cmp_gain
            rewards.append(float(reward))

        return rewards
