"""Vocabulary, batching into parallel streams, chunking, and sampling."""

import itertools
import math

import numpy as np
import pytest

import rnn_ext
import rnn_ext.text
from rnn_ext import RNN, _sample
from rnn_ext.text import Vocab, batchify, default_corpus, iter_chunks, num_chunks, sample

TEXT = "hello world, the quick brown fox\njumps over the lazy dog.\n" * 3

# -- Vocab ---------------------------------------------------------------------


def test_vocab_sorted_unique_and_round_trip():
    v = Vocab.from_text(TEXT)
    assert v.chars == "".join(sorted(set(TEXT)))
    assert len(v) == len(set(TEXT))
    ids = v.encode(TEXT)
    assert ids.dtype == np.int64 and ids.shape == (len(TEXT),)
    assert ids.min() >= 0 and ids.max() < len(v)
    assert v.decode(ids) == TEXT
    assert v.decode(ids.reshape(3, -1)) == TEXT
    assert v.decode(list(ids[:5])) == TEXT[:5]
    assert v.decode(int(ids[0])) == TEXT[0]
    assert v.encode("").shape == (0,)
    assert v.decode([]) == ""


def test_vocab_ids_follow_sorted_order():
    v = Vocab.from_text("cab")
    np.testing.assert_array_equal(v.encode("abcab"), [0, 1, 2, 0, 1])


def test_vocab_beyond_ascii_and_bmp():
    text = "naïve café — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🙂 ok"
    v = Vocab.from_text(text)
    assert v.decode(v.encode(text)) == text
    assert "🙂" in v and "x" not in v


def test_vocab_codepoints_round_trip():
    v = Vocab.from_text("zyx€🙂\n")
    cps = v.codepoints
    assert cps.dtype == np.int32
    assert Vocab.from_codepoints(cps) == v


def test_vocab_in_given_order():
    v = Vocab("ba")
    np.testing.assert_array_equal(v.encode("ab"), [1, 0])
    assert v != Vocab("ab")


def test_unknown_character_is_named():
    v = Vocab.from_text("abc")
    with pytest.raises(ValueError, match=r"'z'.*position 3"):
        v.encode("abcz")
    with pytest.raises(ValueError, match="2 unknown"):
        v.encode("xay")


def test_vocab_bad_input():
    with pytest.raises(ValueError, match="empty"):
        Vocab.from_text("")
    with pytest.raises(ValueError, match="twice"):
        Vocab("abca")
    with pytest.raises(TypeError):
        Vocab.from_text(b"abc")
    v = Vocab.from_text("abc")
    with pytest.raises(ValueError, match="out of range"):
        v.decode([0, 3])
    with pytest.raises(ValueError, match="out of range"):
        v.decode([-1])
    with pytest.raises(TypeError):
        v.decode([0.5])
    with pytest.raises(ValueError):
        Vocab.from_codepoints(np.array([-1, 5]))


# -- batching and chunks ---------------------------------------------------------


def test_batchify_shapes_and_streams():
    ids = np.arange(103)
    s = batchify(ids, 4)
    assert s.shape == (25, 4) and s.dtype == np.int64 and s.flags.c_contiguous
    for b in range(4):  # each column is a contiguous piece of the text
        np.testing.assert_array_equal(s[:, b], ids[b * 25 : (b + 1) * 25])


def test_batchify_bad_input():
    with pytest.raises(ValueError, match="cannot fill"):
        batchify(np.arange(3), 4)
    with pytest.raises(ValueError):
        batchify(np.arange(6).reshape(2, 3), 1)
    with pytest.raises(ValueError):
        batchify(np.arange(6), 0)


@pytest.mark.parametrize("n, t", [(26, 5), (25, 5), (7, 10), (2, 1)])
def test_chunks_shapes_and_one_step_shift(n, t):
    streams = batchify(np.arange(n * 3), 3)
    chunks = list(iter_chunks(streams, t))
    assert len(chunks) == num_chunks(n, t)
    for x, y in chunks:
        assert x.shape == y.shape and x.shape[1] == 3 and 1 <= x.shape[0] <= t
        assert x.flags.c_contiguous and y.flags.c_contiguous
        np.testing.assert_array_equal(y, x + 1)  # the target is the next id
    assert all(x.shape[0] == t for x, _ in chunks[:-1])
    # Together the chunks cover each stream once: x is streams[:-1], y is streams[1:].
    np.testing.assert_array_equal(np.concatenate([x for x, _ in chunks]), streams[:-1])
    np.testing.assert_array_equal(np.concatenate([y for _, y in chunks]), streams[1:])


def test_chunks_start_resumes():
    streams = batchify(np.arange(60), 2)
    all_chunks = list(iter_chunks(streams, 4))
    later = list(iter_chunks(streams, 4, start=3))
    assert len(later) == len(all_chunks) - 3
    np.testing.assert_array_equal(later[0][0], all_chunks[3][0])


def test_default_corpus():
    pytest.importorskip("pydoc_data.topics")
    text = default_corpus()
    assert len(text) > 100_000 and "def" in text


# -- sampling ------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_vocab():
    v = Vocab.from_text(TEXT)
    m = RNN(len(v), 16, len(v), seed=5, dtype=np.float64)
    m.V = m.V * 8  # sharper distributions, so decodings differ visibly
    m.vocab = v
    return m, v


def test_sample_reproducible_under_seed(model_and_vocab):
    m, v = model_and_vocab
    a = sample(m, v, prime="the ", length=80, seed=3)
    b = sample(m, v, prime="the ", length=80, seed=3)
    c = sample(m, v, prime="the ", length=80, seed=4)
    assert a == b
    assert a != c
    assert len(a) == 80 and set(a) <= set(v.chars)


def test_sample_uses_model_vocab_by_default(model_and_vocab):
    m, v = model_and_vocab
    assert sample(m, prime="fox", length=20, seed=1) == sample(m, v, prime="fox", length=20, seed=1)


def greedy_by_full_forward(m, v, prime, length):
    """Argmax decoding that re-runs the whole sequence each time (slow, obviously right)."""
    ids = list(v.encode(prime))
    for _ in range(length):
        probs = m.forward(np.array(ids)[:, None]).probs
        ids.append(int(np.argmax(probs[-1, 0])))
    return v.decode(ids[len(prime):])


def test_temperature_zero_is_argmax_decoding(model_and_vocab):
    m, v = model_and_vocab
    greedy = sample(m, v, prime="over the", length=30, temperature=0)
    assert greedy == greedy_by_full_forward(m, v, "over the", 30)
    assert greedy == sample(m, v, prime="over the", length=30, temperature=0, seed=99)
    assert greedy == sample(m, v, prime="over the", length=30, temperature=1e-6, seed=1)
    assert greedy == sample(m, v, prime="over the", length=30, temperature=1.0, top_k=1, seed=2)


def test_sample_carries_state_like_one_long_forward(model_and_vocab):
    # Feeding the sample back through one forward pass reproduces the step-by-step
    # states: the prime is run once and the state is carried, not re-fed.
    m, v = model_and_vocab
    s = sample(m, v, prime="dog", length=25, temperature=0)
    full = m.forward(v.encode("dog" + s)[:, None]).probs
    np.testing.assert_array_equal(np.argmax(full[2:-1, 0], axis=1), v.encode(s))


def test_sample_empty_prime_and_lengths(model_and_vocab):
    m, v = model_and_vocab
    assert sample(m, v, length=0, seed=0) == ""
    s = sample(m, v, length=15, seed=0)
    assert len(s) == 15
    assert sample(m, v, length=15, temperature=0) == greedy_by_full_forward(m, v, "\n", 15)


def fixed_distribution_model(logits):
    """A model whose output distribution is softmax(logits) at every step (V = 0)."""
    k = len(logits)
    v = Vocab("".join(chr(ord("a") + i) for i in range(k)))
    m = RNN(k, 3, k, seed=0, dtype=np.float64)
    m.V = np.zeros((k, 3))
    m.c = np.asarray(logits, dtype=np.float64)
    m.vocab = v
    return m, v


@pytest.mark.parametrize("top_k", [1, 2, 3, 5, 7])
def test_sample_top_k_draws_exactly_the_k_likeliest(top_k):
    """At a high temperature the top k are near-uniform, so 600 draws show every one of
    them, and no other: top_k - 1 or top_k + 1 would change the set seen."""
    logits = [0.5, 3.0, -1.0, 2.0, 1.0, -2.0, 0.0, 2.5]  # ranks: b h d e a g c f
    m, v = fixed_distribution_model(logits)
    out = sample(m, v, length=600, temperature=1e3, top_k=top_k, seed=0)
    likeliest = {v.chars[i] for i in np.argsort(logits)[::-1][:top_k]}
    assert set(out) == likeliest


def test_sample_top_k_with_ties_keeps_exactly_k():
    m, v = fixed_distribution_model([1.0, 2.0, 2.0, 2.0, 0.0])
    out = sample(m, v, length=400, temperature=1e3, top_k=2, seed=1)
    assert set(out) == {"b", "c"}  # ties at the cut go to the lower ids


def test_sample_top_k_restricts_choices(model_and_vocab):
    m, v = model_and_vocab
    out = sample(m, v, prime="t", length=1, top_k=2, temperature=5.0, seed=0)
    z = m.forward(v.encode("t")[:, None]).probs[-1, 0]
    assert v.encode(out)[0] in np.argsort(z)[-2:]


@pytest.mark.parametrize("temperature", [1e-310, 5e-324, 1e-300, 1e-30, 1e-6])
def test_tiny_temperatures_approach_greedy(model_and_vocab, temperature):
    """z / T overflows for tiny T: computed as (z - max z) / T it is 0 for the maximum and
    -inf elsewhere, a one-hot distribution, never NaN (and warnings are errors here)."""
    m, v = model_and_vocab
    greedy = sample(m, v, prime="the ", length=60, temperature=0)
    assert sample(m, v, prime="the ", length=60, temperature=temperature, seed=3) == greedy
    assert sample(m, v, prime="the ", length=60, temperature=temperature, top_k=4, seed=3) == greedy


@pytest.mark.parametrize("temperature", [1e10, 1e300, np.finfo(np.float64).max])
def test_huge_temperatures_are_uniform(temperature):
    m, v = fixed_distribution_model([30.0, -30.0, 0.0, 5.0])
    out = sample(m, v, length=800, temperature=temperature, seed=2)
    counts = [out.count(ch) for ch in v.chars]
    assert min(counts) > 150, counts


def test_sample_length_beyond_memory_is_refused():
    m, v = fixed_distribution_model([0.0, 1.0])
    with pytest.raises(ValueError, match=r"length=1000000000000: the sample needs about .* of memory"):
        sample(m, v, length=10**12)


def test_sample_batch_first_model(model_and_vocab):
    m, v = model_and_vocab
    mb = RNN(len(v), 16, len(v), seed=5, dtype=np.float64, batch_first=True)
    for k, p in m.parameters().items():
        setattr(mb, k, p)
    assert sample(mb, v, prime="the ", length=30, seed=8) == sample(m, v, prime="the ", length=30, seed=8)


def test_sample_bad_input(model_and_vocab):
    m, v = model_and_vocab
    with pytest.raises(ValueError, match="temperature"):
        sample(m, v, temperature=-0.5)
    with pytest.raises(ValueError, match="temperature"):
        sample(m, v, temperature=float("nan"))
    with pytest.raises(ValueError, match="length"):
        sample(m, v, length=-1)
    with pytest.raises(ValueError, match="top_k"):
        sample(m, v, top_k=0)
    with pytest.raises(ValueError, match="'Z'"):
        sample(m, v, prime="Z")
    with pytest.raises(ValueError, match="vocabulary has 3"):
        sample(m, Vocab("abc"))
    bare = RNN(len(v), 4, len(v))
    with pytest.raises(ValueError, match="no vocabulary"):
        sample(bare)


# -- sampling from stacked models ------------------------------------------------------


@pytest.mark.parametrize("num_layers", [1, 3])
def test_greedy_sample_carries_every_layer(num_layers):
    """Greedy decoding step by step equals one forward pass over prime + sample:
    each character is the argmax after the text before it."""
    v = Vocab.from_text(TEXT)
    m = RNN(len(v), 12, len(v), num_layers=num_layers, seed=4, dtype=np.float64)
    m.set_params({"V": m.V * 8})  # sharper predictions: fewer near-ties in the argmax
    prime = "the qu"
    out = sample(m, v, prime=prime, length=30, temperature=0)
    ids = v.encode(prime + out)
    probs = m.forward(ids[:-1]).probs
    np.testing.assert_array_equal(np.argmax(probs[len(prime) - 1 :], axis=1), ids[len(prime) :])


def test_sample_refuses_a_bidirectional_model():
    v = Vocab.from_text(TEXT)
    with pytest.raises(ValueError, match="bidirectional"):
        sample(RNN(len(v), 4, len(v), bidirectional=True, seed=0), v, length=3)


# -- the compiled loop against the rule written out ------------------------------------


def reference_sample(m, v, prime, length, temperature=1.0, top_k=None, rng=None):
    """The sampling rule in plain Python, one character at a time (slow, obviously right).

    The state is carried by a one-step forward pass.  From the top layer's state h:
    z = V h + c in float64 (h widened from the model's dtype); temperature 0 takes the
    first maximum of z; otherwise s = z - max z, only the top_k largest s stay (a stable
    sort decides: ties at the cut go to the lower id), p_i = exp(s_i / temperature), and
    the id is the first whose running sum of p exceeds u * sum(p), for one uniform u
    per character (the last id with p > 0 if none does).
    """
    K = len(v)
    V = m.V.astype(np.float64)
    c = np.zeros(K) if m.c is None else m.c.astype(np.float64)
    h_n = m.forward(v.encode(prime)[:, None]).h_n
    ids = []
    for i in range(length):
        z = [float(a) for a in (h_n[-1].astype(np.float64) @ V.T + c)[0]]
        if temperature == 0:
            nxt = max(range(K), key=lambda j: (z[j], -j))
        else:
            top = max(z)
            s = [a - top for a in z]
            kept = set(sorted(range(K), key=lambda j: (-s[j], j))[: top_k or K])
            p = [math.exp(s[j] / temperature) if j in kept else 0.0 for j in range(K)]
            cdf = list(itertools.accumulate(p))
            x = rng.random() * cdf[-1]
            nxt = next((j for j in range(K) if cdf[j] > x), None)
            if nxt is None:
                nxt = max(j for j in range(K) if p[j] > 0)
        ids.append(nxt)
        if i + 1 < length:
            h_n = m.forward(np.array([[nxt]]), h0=h_n).h_n
    return v.decode(ids)


@pytest.fixture(scope="module", params=[(np.float32, 1, "tanh"), (np.float64, 1, "tanh"),
                                        (np.float32, 3, "tanh"), (np.float64, 2, "relu")],
                ids=lambda p: f"{p[0].__name__}-L{p[1]}-{p[2]}")
def ref_model(request):
    dtype, num_layers, nonlinearity = request.param
    v = Vocab.from_text(TEXT)
    m = rnn_ext.RNN(len(v), 12, len(v), num_layers=num_layers, nonlinearity=nonlinearity,
                    dtype=dtype, seed=num_layers)
    m.set_params({"V": m.V * 3})  # peaked enough that the temperature matters
    return m, v


@pytest.mark.parametrize("temperature", [0, 0.3, 1.0, 3.0])
@pytest.mark.parametrize("top_k", [None, 1, 4, 20])
def test_sample_equals_the_rule_written_out(ref_model, temperature, top_k):
    m, v = ref_model
    for seed in range(3):
        got = sample(m, v, prime="the ", length=60, temperature=temperature, top_k=top_k, seed=seed)
        want = reference_sample(m, v, "the ", 60, temperature, top_k, np.random.default_rng(seed))
        assert got == want, (seed, got, want)


@pytest.mark.parametrize("logits", [[1.0, 2.0, 2.0, 0.0, 2.0, 1.0, 2.0, 0.0],
                                    [0.0] * 7,
                                    [3.0, -1.0, 3.0, 3.0, -1.0, 0.5, -1.0, 3.0, 0.5],
                                    # 40 entries in 6 runs of ties: top_k up to 16 and above
                                    # are selected by different code
                                    [float(i * 7 % 6) for i in range(40)]])
def test_sample_top_k_cuts_through_ties_like_the_rule(logits):
    """Every cut position through runs of equal logits (V = 0, so z = c at every step)."""
    m, v = fixed_distribution_model(logits)
    for top_k in range(1, len(logits) + 1):
        for temperature in (0.7, 50.0):
            got = sample(m, v, length=300, temperature=temperature, top_k=top_k, seed=top_k)
            want = reference_sample(m, v, "a", 300, temperature, top_k,
                                    np.random.default_rng(top_k))
            assert got == want, (top_k, temperature)
            kept = sorted(range(len(logits)), key=lambda j: (-logits[j], j))[:top_k]
            assert set(v.encode(got)) <= set(kept)


def draw_one(logits, u, top_k=0, temperature=1.0):
    """One id drawn by the compiled loop for the uniform u (V = 0, so z = c)."""
    m, _ = fixed_distribution_model(logits)
    flat, offs, V, c = m._generation_params()
    out = np.empty(1, dtype=np.intp)
    h = np.zeros((1, 1, m.hidden_size))
    assert _sample.generate(h, flat, offs, len(logits), False, V, c, temperature, top_k,
                            np.array([u]), out, False) == -1
    return int(out[0])


def test_draw_at_the_ends_of_the_unit_interval():
    """u = 0 (rng.random() can return it) draws the first id with p > 0, never one that
    top_k removed.  u * cdf[-1] == cdf[-1] (not reachable with u < 1 in IEEE arithmetic,
    but the rule says what happens): no cdf entry exceeds it, and the last id with p > 0
    is drawn, again never one that top_k removed."""
    assert draw_one([-1.0, 0.0, 0.0], 0.0, top_k=2) == 1
    assert draw_one([-1.0, 0.0, 0.0], 0.0) == 0
    assert draw_one([0.0, 0.0, 0.0, -1.0, -1.0], 1.0, top_k=3) == 2
    assert draw_one([0.0, 0.0, 0.0, -1.0, -1.0], 1.0) == 4
    assert draw_one([0.0, 0.0, 0.0, -1.0, -1.0], np.nextafter(1.0, 0.0), top_k=3) == 2


def test_sample_chunks_continue_each_other(ref_model, monkeypatch):
    m, v = ref_model
    whole = [sample(m, v, prime="a", length=50, temperature=t, seed=1) for t in (0, 1.0)]
    monkeypatch.setattr(rnn_ext.text, "_CHUNK", 7)
    assert [sample(m, v, prime="a", length=50, temperature=t, seed=1) for t in (0, 1.0)] == whole


def test_sample_draws_one_uniform_per_character(model_and_vocab):
    m, v = model_and_vocab
    g = np.random.default_rng(5)
    sample(m, v, length=40, temperature=1.0, seed=g)
    assert g.random() == np.random.default_rng(5).random(41)[-1]
    g = np.random.default_rng(5)
    sample(m, v, length=40, temperature=0, seed=g)  # greedy draws nothing
    assert g.random() == np.random.default_rng(5).random()


@pytest.mark.parametrize("bitgen", [np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_sample_with_any_bit_generator(model_and_vocab, bitgen):
    m, v = model_and_vocab
    got = sample(m, v, prime="fox", length=80, top_k=5, seed=np.random.Generator(bitgen(7)))
    want = reference_sample(m, v, "fox", 80, 1.0, 5, np.random.Generator(bitgen(7)))
    assert got == want


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_sample_refuses_a_state_that_overflows(temperature):
    """relu with huge recurrent weights: h = 2, then 8e20, then inf.  The step from an
    infinite state is refused, as forward and step refuse such an h0."""
    v = Vocab("abcd")
    m = rnn_ext.RNN(4, 4, 4, nonlinearity="relu", seed=0)
    m.set_params({"U": np.ones((4, 4)), "W": np.full((4, 4), 1e20), "b": np.ones(4)})
    assert len(sample(m, v, prime="a", length=2, temperature=temperature, seed=0)) == 2
    with pytest.raises(ValueError, match="overflowed.*at character 2 of the sample"):
        sample(m, v, prime="a", length=5, temperature=temperature, seed=0)


def test_sample_reads_a_coherent_copy_of_the_parameters(model_and_vocab):
    m, v = model_and_vocab
    flat, offs, V, c = m._generation_params()
    assert V.dtype == np.float64 and V.flags.c_contiguous and c.dtype == np.float64
    np.testing.assert_array_equal(V, m.V)
    np.testing.assert_array_equal(flat, m.layer.flat)
    assert not np.shares_memory(flat, m.flat) and not np.shares_memory(V, m.flat)
