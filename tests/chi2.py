"""Chi-square goodness of fit for the sampling tests (sampled token counts against a distribution)."""
import numpy as np
from scipy import stats


def chi2_pvalue(counts, probs) -> float:
    """p-value of `counts` under `probs`; bins expecting < 5 draws are pooled so the approximation holds (a
    distribution with a single bin fits trivially: 1.0)."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    if len(exp) < 2:
        return 1.0
    return float(stats.chi2.sf(((obs - exp) ** 2 / exp).sum(), len(exp) - 1))
