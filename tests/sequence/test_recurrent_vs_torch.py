"""RNN/LSTM/GRU, Embedding, LayerNorm and MultiheadAttention against torch.nn with copied
weights, float64, forward and backward (incl. pack_padded_sequence for lengths), plus float64
numerical gradients of the fused cells (issue 18, item 2)."""
import numpy as np
import pytest

from mpinet import amp, nn
from mpinet.autograd import Variable
from mpinet.ops import recurrent as rec
from mpinet.testing import check_backward

torch = pytest.importorskip("torch")


def _copy_from_torch(ours, theirs):
    """torch's parameters into ours by name, as float64 (names must match one for one)."""
    ts = dict(theirs.named_parameters())
    os_ = dict(ours.named_parameters())
    assert sorted(ts) == sorted(os_), (sorted(ts), sorted(os_))
    for name, p in os_.items():
        assert p.shape == tuple(ts[name].shape), name
        p.data = ts[name].detach().numpy().astype(np.float64).copy()


def _compare_grads(ours, theirs, rtol=1e-9, atol=1e-11):
    ts = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, ts[name].grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=name)


RECURRENT = [
    # (kind, options, with lengths, with initial state)
    ("LSTM", dict(num_layers=1), False, False),
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True), False, True),
    ("LSTM", dict(num_layers=2, bidirectional=True), True, False),
    ("LSTM", dict(num_layers=1, batch_first=True, bias=False), True, True),
    ("GRU", dict(num_layers=1), False, True),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True), True, False),
    ("GRU", dict(num_layers=1, bidirectional=True), True, True),
    ("RNN", dict(num_layers=2, nonlinearity="tanh", bidirectional=True), True, False),
    ("RNN", dict(num_layers=1, nonlinearity="relu", batch_first=True), True, True),
    ("RNN", dict(num_layers=1, nonlinearity="relu"), False, False),
]


@pytest.mark.parametrize("kind,opts,use_lengths,use_h0", RECURRENT,
                         ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in o.items())}-len{n}-h0{h}"
                              for k, o, n, h in RECURRENT])
def test_recurrent_layer_vs_torch(kind, opts, use_lengths, use_h0):
    steps, batch, n_in, hidden = 6, 4, 3, 5
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(n_in, hidden, **opts).double()
    ours = getattr(nn, kind)(n_in, hidden, **opts)
    _copy_from_torch(ours, theirs)
    bf = opts.get("batch_first", False)
    x = rng.standard_normal((batch, steps, n_in) if bf else (steps, batch, n_in))
    lengths = np.array([6, 2, 5, 1]) if use_lengths else None
    layers_dirs = opts.get("num_layers", 1) * (2 if opts.get("bidirectional") else 1)
    h0 = rng.standard_normal((layers_dirs, batch, hidden)) if use_h0 else None
    c0 = rng.standard_normal((layers_dirs, batch, hidden)) if use_h0 else None

    xv = Variable(x.copy(), requires_grad=True)
    hx = None
    if use_h0:
        hv, cv = Variable(h0.copy(), requires_grad=True), Variable(c0.copy(), requires_grad=True)
        hx = (hv, cv) if kind == "LSTM" else hv
    out, state = ours(xv, hx, lengths=lengths)
    h_n, c_n = state if kind == "LSTM" else (state, None)

    xt = torch.tensor(x, requires_grad=True)
    thx = None
    if use_h0:
        ht = torch.tensor(h0, requires_grad=True)
        ct = torch.tensor(c0, requires_grad=True)
        thx = (ht, ct) if kind == "LSTM" else ht
    if use_lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                         batch_first=bf, enforce_sorted=False)
        tout, tstate = theirs(packed, thx)
        tout, _ = torch.nn.utils.rnn.pad_packed_sequence(tout, batch_first=bf,
                                                         total_length=steps)
    else:
        tout, tstate = theirs(xt, thx)
    th_n, tc_n = tstate if kind == "LSTM" else (tstate, None)

    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_n.data, th_n.detach().numpy(), rtol=1e-10, atol=1e-12)
    if use_lengths:  # padded steps: exactly zero
        for n, length in enumerate(lengths):
            pad = out.data[n, length:] if bf else out.data[length:, n]
            assert not pad.any()
    g_out, g_h = rng.standard_normal(out.shape), rng.standard_normal(h_n.shape)
    loss = (out * g_out).sum() + (h_n * g_h).sum()
    tloss = (tout * torch.tensor(g_out)).sum() + (th_n * torch.tensor(g_h)).sum()
    if kind == "LSTM":
        np.testing.assert_allclose(c_n.data, tc_n.detach().numpy(), rtol=1e-10, atol=1e-12)
        g_c = rng.standard_normal(c_n.shape)
        loss = loss + (c_n * g_c).sum()
        tloss = tloss + (tc_n * torch.tensor(g_c)).sum()
    loss.backward()
    tloss.backward()
    np.testing.assert_allclose(xv.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    if use_h0:
        np.testing.assert_allclose(hv.grad, ht.grad.numpy(), rtol=1e-9, atol=1e-11)
        if kind == "LSTM":
            np.testing.assert_allclose(cv.grad, ct.grad.numpy(), rtol=1e-9, atol=1e-11)
    _compare_grads(ours, theirs)


def test_lstm_state_dict_names_and_shapes_match_torch():
    theirs = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    ours = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})


@pytest.mark.parametrize("masked", [False, True])
def test_cells_against_numerical_gradients(masked):
    rng = np.random.default_rng(1)
    n, hidden = 3, 4
    mask = np.array([[1.0], [0.0], [1.0]]) if masked else None

    h_const = rng.standard_normal((n, hidden))

    def lstm_all(gx, gh, c, *h):  # h_prev enters the cell only through masked rows' carry
        h2, c2, out = rec.lstm_cell(gx, gh, c, h[0] if h else h_const, mask)
        return h2 * 1.5 + c2 * 0.5 + out

    check_backward(lstm_all, [rng.standard_normal((n, 4 * hidden)),
                              rng.standard_normal((n, 4 * hidden)),
                              rng.standard_normal((n, hidden))]
                   + ([rng.standard_normal((n, hidden))] if masked else []))

    def gru_all(gx, gh, h):
        h2, out = rec.gru_cell(gx, gh, h, mask)
        return h2 * 1.5 + out

    check_backward(gru_all, [rng.standard_normal((n, 3 * hidden)),
                             rng.standard_normal((n, 3 * hidden)),
                             rng.standard_normal((n, hidden))])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_layer_numerical_gradient_with_lengths(kind):
    layer = getattr(nn, kind)(2, 3, bidirectional=True, batch_first=True)
    for p in layer.parameters():
        p.data = p.data.astype(np.float64)
    lengths = np.array([3, 1])

    def f(x, h0):
        hx = (h0, h0 * 0.5) if kind == "LSTM" else h0
        out, state = layer(x, hx, lengths=lengths)
        h = state[0] if kind == "LSTM" else state
        per_step = out.sum(axis=1)  # (N, 2H): forward half, backward half
        result = per_step[:, :3] + per_step[:, 3:] * 0.7 + h.sum(axis=0) * 2
        return result + state[1].sum(axis=0) if kind == "LSTM" else result

    rng = np.random.default_rng(2)
    check_backward(f, [rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 2, 3))])


def test_bad_lengths_and_inputs_are_refused():
    lstm = nn.LSTM(3, 4, batch_first=True)
    x = Variable(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\] .* got length 7 in "
                                         r"lengths of shape \(2,\)"):
        lstm(x, lengths=np.array([7, 2]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\) .* got shape \(3,\)"):
        lstm(x, lengths=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"expected input \(N, T, 3\), got \(2, 5, 4\)"):
        lstm(Variable(np.zeros((2, 5, 4), np.float32)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 2, 4\)"):
        lstm(x, (np.zeros((1, 3, 4), np.float32), np.zeros((1, 2, 4), np.float32)))


def test_embedding_vs_torch_and_out_of_range():
    rng = np.random.default_rng(0)
    theirs = torch.nn.Embedding(7, 3, padding_idx=2).double()
    ours = nn.Embedding(7, 3, padding_idx=2)
    _copy_from_torch(ours, theirs)
    idx = rng.integers(0, 7, (4, 5))
    out = ours(idx)
    tout = theirs(torch.tensor(idx))
    np.testing.assert_allclose(out.data, tout.detach().numpy())
    g = rng.standard_normal(out.shape)
    (out * g).sum().backward()
    (tout * torch.tensor(g)).sum().backward()
    _compare_grads(ours, theirs, rtol=1e-12)
    with pytest.raises(IndexError, match=r"index 7 at position \(1, 0\) of indices with shape "
                                         r"\(2, 2\) is out of range for a vocabulary of size 7"):
        ours(np.array([[0, 1], [7, 2]]))
    with pytest.raises(IndexError, match=r"index -1 .* vocabulary of size 7"):
        ours(np.array([-1]))


@pytest.mark.parametrize("shape,affine", [((5,), True), ((3, 5), True), ((5,), False)])
def test_layer_norm_vs_torch(shape, affine):
    rng = np.random.default_rng(0)
    theirs = torch.nn.LayerNorm(shape, elementwise_affine=affine).double()
    ours = nn.LayerNorm(shape, elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(rng.standard_normal(shape)))
            theirs.bias.copy_(torch.tensor(rng.standard_normal(shape)))
        _copy_from_torch(ours, theirs)
    x = rng.standard_normal((4,) + shape) * 3 + 1
    xv, xt = Variable(x.copy(), requires_grad=True), torch.tensor(x, requires_grad=True)
    out, tout = ours(xv), theirs(xt)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(out.shape)
    (out * g).sum().backward()
    (tout * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(xv.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    if affine:
        _compare_grads(ours, theirs)
    check_backward(lambda a: ours(a), [x[:2]])


MHA = [
    # (batch_first, self-attention, causal, key padding, bool attn_mask, need per-head weights)
    (True, True, True, False, False, False),
    (False, True, False, True, False, True),
    (True, False, False, False, True, False),
    (True, True, True, True, False, False),
]


@pytest.mark.parametrize("batch_first,self_attn,causal,key_pad,bool_mask,per_head", MHA)
def test_multihead_attention_vs_torch(batch_first, self_attn, causal, key_pad, bool_mask,
                                      per_head):
    rng = np.random.default_rng(0)
    e, heads, n, length, source = 8, 2, 3, 5, 5 if self_attn else 4
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(e, heads, batch_first=batch_first).double()
    with torch.no_grad():
        theirs.in_proj_bias.normal_()
        theirs.out_proj.bias.normal_()
    ours = nn.MultiheadAttention(e, heads, batch_first=batch_first)
    _copy_from_torch(ours, theirs)

    def shaped(length_):
        a = rng.standard_normal((n, length_, e))
        return a if batch_first else a.transpose(1, 0, 2).copy()

    q = shaped(length)
    k = q if self_attn else shaped(source)
    v = q if self_attn else shaped(source)
    kpm = None
    if key_pad:
        kpm = np.zeros((n, source), bool)
        kpm[0, -2:] = True
    mask = None
    if causal:
        tmask = torch.nn.Transformer.generate_square_subsequent_mask(length, dtype=torch.float64)
    if bool_mask:
        mask = rng.random((length, source)) < 0.3
        mask[:, 0] = False  # every query keeps one key
    qv = Variable(q.copy(), requires_grad=True)
    kv = qv if self_attn else Variable(k.copy(), requires_grad=True)
    vv = qv if self_attn else Variable(v.copy(), requires_grad=True)
    out, w = ours(qv, kv, vv, key_padding_mask=kpm, attn_mask=mask, is_causal=causal,
                  average_attn_weights=not per_head)
    qt = torch.tensor(q, requires_grad=True)
    kt = qt if self_attn else torch.tensor(k, requires_grad=True)
    vt = qt if self_attn else torch.tensor(v, requires_grad=True)
    tout, tw = theirs(qt, kt, vt,
                      key_padding_mask=None if kpm is None else torch.tensor(kpm),
                      attn_mask=tmask if causal else (None if mask is None
                                                      else torch.tensor(mask)),
                      average_attn_weights=not per_head)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w.data, tw.detach().numpy(), rtol=1e-10, atol=1e-12)
    if causal:  # no weight on later positions
        assert not np.triu(w.data[0] if not per_head else w.data[0, 0], k=1).any()
    g = rng.standard_normal(out.shape)
    (out * g).sum().backward()
    (tout * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(qv.grad, qt.grad.numpy(), rtol=1e-9, atol=1e-11)
    if not self_attn:
        np.testing.assert_allclose(kv.grad, kt.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(vv.grad, vt.grad.numpy(), rtol=1e-9, atol=1e-11)
    _compare_grads(ours, theirs)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_bf16_autocast_stays_close_to_fp32(kind):
    layer = getattr(nn, kind)(3, 8, batch_first=True, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    want = layer(Variable(x), lengths=np.array([5, 3]))[0].data
    xv = Variable(x, requires_grad=True)
    with amp.autocast("bf16"):
        out = layer(xv, lengths=np.array([5, 3]))[0]
    assert out.dtype.name == "bfloat16"
    np.testing.assert_allclose(out.data.astype(np.float32), want, atol=3e-2)
    amp.cast(out, np.dtype(np.float32)).sum().backward()
    assert xv.grad.dtype == np.float32 and np.isfinite(xv.grad).all()
    assert layer.weight_hh_l0.grad.dtype == np.float32  # fp32 master weights get fp32 grads


@pytest.mark.parametrize("kind,with_state", [("LSTMCell", True), ("LSTMCell", False),
                                             ("GRUCell", True), ("GRUCell", False)])
def test_cells_vs_torch(kind, with_state):
    rng = np.random.default_rng(0)
    theirs = getattr(torch.nn, kind)(3, 4).double()
    ours = getattr(nn, kind)(3, 4)
    _copy_from_torch(ours, theirs)
    x = rng.standard_normal((5, 3))
    h0, c0 = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    xv = Variable(x.copy(), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    if kind == "LSTMCell":
        h, c = ours(xv, (h0, c0) if with_state else None)
        th, tc = theirs(xt, (torch.tensor(h0), torch.tensor(c0)) if with_state else None)
        loss, tloss = (h * 2).sum() + c.sum(), (th * 2).sum() + tc.sum()
    else:
        h = ours(xv, h0 if with_state else None)
        th = theirs(xt, torch.tensor(h0) if with_state else None)
        loss, tloss = (h * 2).sum(), (th * 2).sum()
    np.testing.assert_allclose(h.data, th.detach().numpy(), rtol=1e-12)
    loss.backward()
    tloss.backward()
    np.testing.assert_allclose(xv.grad, xt.grad.numpy(), rtol=1e-10)
    _compare_grads(ours, theirs)


def test_attention_and_layer_norm_under_bf16_autocast():
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    norm = nn.LayerNorm(8)
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    want = norm(attn(Variable(x), Variable(x), Variable(x), is_causal=True)[0]).data
    xv = Variable(x, requires_grad=True)
    with amp.autocast("bf16"):
        out = norm(attn(xv, xv, xv, is_causal=True)[0])
    assert out.dtype == np.float32  # layer norm's statistics in fp32
    np.testing.assert_allclose(out.data, want, atol=0.1)
    out.sum().backward()
    assert attn.in_proj_weight.grad.dtype == np.float32 and np.isfinite(xv.grad).all()


def test_embedding_and_attention_numerical_gradients():
    from mpinet.ops import embedding as embedding_ops

    rng = np.random.default_rng(5)
    idx = np.array([[0, 2, 2], [1, 0, 3]])  # a repeated id: its gradients must add up
    check_backward(lambda w: embedding_ops.embedding(idx, w), [rng.standard_normal((4, 3))])
    attn = nn.MultiheadAttention(4, 2, batch_first=True)
    for p in attn.parameters():
        p.data = rng.standard_normal(p.shape) * 0.5
    key_padding = np.array([[False, False, True], [False, False, False]])

    def f(q, kv):
        return attn(q, kv, kv, key_padding_mask=key_padding)[0]

    check_backward(f, [rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))])

    def causal(x):
        out, weights = attn(x, x, x, is_causal=True)
        return out + weights[:, :, :1] * 2  # the attention weights get a gradient too

    check_backward(causal, [rng.standard_normal((2, 3, 4))])
