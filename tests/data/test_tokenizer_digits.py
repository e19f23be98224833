"""split_digits: a digit is one token wherever it stands (the demo's arithmetic depends on it)."""
from omnirrm_jax.data.tokenizer import train_sentencepiece

TEXTS = [f"Question: What is {x} + {y}?\nAnswer A: {x + y}\nAnswer B: {x + y + 1}, so {x + y}; ok."
         for x in range(1, 5) for y in range(1, 5)] * 4


def _pieces(tok, text):
    return [tok.decode([i]) for i in tok.encode(text)]


def test_split_digits_gives_one_token_per_digit():
    tok = train_sentencepiece(TEXTS, 400, split_digits=True)
    for text in ("2?", " 2,", " 2;", "12"):
        assert [p for p in _pieces(tok, text) if any(c.isdigit() for c in p)] == list(text.strip(" ?,;")), text
    merged = train_sentencepiece(TEXTS, 400)  # the default merges digits with what follows them
    assert any(len(p.strip()) > 1 and any(c.isdigit() for c in p) for t in TEXTS[:8] for p in _pieces(merged, t))
