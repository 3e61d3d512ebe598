"""An analytic model of an ftrain training step: FLOPs, communication, memory and time.

Used by ftrain-sweep (launch/tools/ftrain_sweep.py) to predict layouts nobody has run yet
and to check the runs that were: its communication volume is the one ftrain counts
(`comm_bytes` in metrics.jsonl, docs/training.md "Sharding and communication volume")
and its parameter, gradient and optimizer bytes are the ones ftrain reports in the
memory record, to the byte. docs/scaling.md derives every formula.

Notation: psi parameters (what one tensor-parallel rank holds), T = tp ranks, N = dp
ranks, B sequences per micro-batch, S tokens per sequence, C width, L layers, V vocabulary.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

FP32 = 4  # ftrain keeps weights, gradients and AdamW moments in fp32

# ---------------------------------------------------------------------------------
# The model's shape


@dataclass(frozen=True)
class ModelShape:
    """What the formulas need of a decoder-only transformer, read from its Hugging Face
    config.json (`shape_from_config`)."""
    family: str            # "gpt2" | "llama" (Llama, Mistral, Qwen2)
    vocab: int             # V
    width: int             # C
    layers: int            # L
    heads: int             # query heads
    kv_heads: int          # key/value heads (grouped-query attention); = heads for GPT-2
    intermediate: int      # MLP hidden width
    positions: int = 0     # GPT-2's learned position embeddings; 0 for rotary
    tied: bool = True      # the head shares the token embedding
    attention_bias: bool = False  # Llama family: biases on q, k, v (Qwen2)
    mlp_bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def shape_from_config(config: dict) -> ModelShape:
    """The shape of a GPT-2 or Llama-family model from its config.json dictionary."""
    kind = config.get("model_type", "")
    if kind == "gpt2":
        width = config["n_embd"]
        return ModelShape("gpt2", config["vocab_size"], width, config["n_layer"], config["n_head"], config["n_head"],
                          config.get("n_inner") or 4 * width, config["n_positions"],
                          config.get("tie_word_embeddings", True))
    if kind in ("llama", "mistral", "qwen2"):
        heads = config["num_attention_heads"]
        return ModelShape("llama", config["vocab_size"], config["hidden_size"], config["num_hidden_layers"], heads,
                          config.get("num_key_value_heads") or heads, config["intermediate_size"], 0,
                          config.get("tie_word_embeddings", False),
                          config.get("attention_bias", kind == "qwen2"), config.get("mlp_bias", False))
    raise ValueError(f"model_type '{kind}' is not modelled: gpt2, llama, mistral or qwen2")


def vocab_rows(vocab: int, tp: int) -> int:
    """Rows of a vocabulary-parallel matrix on one rank: V padded to a multiple of T, over T."""
    return -(-vocab // tp)


def kv_heads_per_rank(shape: ModelShape, tp: int) -> int:
    """Key/value heads one tensor-parallel rank holds: split when T divides them, one
    shared head when T is a multiple of them (docs/tensor-parallel.md)."""
    if shape.kv_heads % tp == 0:
        return shape.kv_heads // tp
    if tp % shape.kv_heads == 0:
        return 1
    raise ValueError(f"tp {tp} neither divides nor is a multiple of {shape.kv_heads} key/value heads")


def parameter_units(shape: ModelShape, tp: int = 1) -> tuple[int, list[int]]:
    """Elements one tensor-parallel rank holds: (root, [block 0, block 1, ...]), the
    units ZeRO-2 reduces and ZeRO-3 gathers one at a time. The root is every parameter in no block:
    embeddings, final norm, an untied head. Column-parallel matrices and their biases
    are split T ways, row-parallel matrices too (their biases whole), vocabulary
    matrices by rows padded to a multiple of T, norms and GPT-2's position embedding
    whole."""
    C, I, T = shape.width, shape.intermediate, tp
    if shape.heads % T or I % T:
        raise ValueError(f"tp {T} does not divide {shape.heads} heads and intermediate width {I}")
    embedding = vocab_rows(shape.vocab, T) * C
    head = 0 if shape.tied else embedding
    if shape.family == "gpt2":
        root = embedding + shape.positions * C + 2 * C + head
        block = (2 * C                      # ln_1
                 + 3 * C * C // T + 3 * C // T  # c_attn, column by heads
                 + C * C // T + C           # attn.c_proj, row; bias whole
                 + 2 * C                    # ln_2
                 + I * C // T + I // T      # c_fc, column
                 + I * C // T + C)          # mlp.c_proj, row; bias whole
    else:
        hs = shape.head_dim
        q = shape.heads // T * hs
        kv = kv_heads_per_rank(shape, T) * hs
        block = (C * q + 2 * C * kv + q * C            # q, k, v, o
                 + (q + 2 * kv if shape.attention_bias else 0)
                 + 3 * C * I // T                      # gate, up (column), down (row)
                 + (2 * I // T + C if shape.mlp_bias else 0)
                 + 2 * C)                              # the two norms
        root = embedding + C + head
    return root, [block] * shape.layers


@dataclass(frozen=True)
class Zero3Units:
    """ZeRO-3's units (dist/zero.h): `input`, the elements used only before the first
    block (a unit of its own when nonzero); `root`, the rest outside the blocks; the
    blocks; and the vocabulary matrices that stream by rows, (V, C) each, never
    gathered whole."""
    input: int
    root: int
    blocks: list[int]
    vocabulary: list[tuple[int, int]]

    def vocabulary_shard(self, dp: int) -> int:
        """Elements per rank of the vocabulary units: ceil(V / N) whole rows each."""
        return sum(-(-rows // dp) * columns for rows, columns in self.vocabulary)


# Passes over a vocabulary matrix per micro-batch: all-gathers (the embedding's look-up,
# the head's forward and its backward) and reduce-scatters (the embedding's gradient,
# the head's), each pass one collective per window. Tied or untied, the total is the
# same: one matrix used three and two times, or two matrices of the same size used
# (1, 1) and (2, 1) times.
VOCABULARY_GATHERS, VOCABULARY_REDUCTIONS = 3, 2
# The most bytes of one gathered window (dist/zero.h, kStreamWindowBytes), unless a
# quarter of the largest block gathered whole is less.
STREAM_WINDOW_BYTES = 64 * 2**20


def stream_windows(rows: int, columns: int, dp: int, window_bytes: int = STREAM_WINDOW_BYTES) -> tuple[int, int]:
    """(W, Rw): the windows a vocabulary matrix of (rows, columns) streams in over dp
    ranks, each at most window_bytes (ftrain: 64 MiB or a quarter of the largest block
    gathered whole, whichever is less), and the rows of each owner in one window
    (dist/streamed_vocab.cpp)."""
    per_rank = -(-rows // dp)
    count = min(max(1, -(-dp * per_rank * columns * FP32 // window_bytes)), per_rank)
    return count, -(-per_rank // count)


def zero3_units(shape: ModelShape, tp: int = 1) -> Zero3Units:
    """ZeRO-3's units. Without tensor parallelism the token embedding and an untied head
    stream by rows ("Vocabulary units"): the input unit keeps GPT-2's position
    embeddings (none for the Llama family) and the root the final norm. Under tensor
    parallelism an untied head's embeddings are the input unit and the root keeps the
    final norm and the head; tied, the input is 0 and the root is parameter_units' root
    (dist/zero.h, "Input unit")."""
    root, blocks = parameter_units(shape, tp)
    C = shape.width
    positions = shape.positions * C if shape.family == "gpt2" else 0
    if tp == 1:
        vocabulary = [(shape.vocab, C)] * (1 if shape.tied else 2)
        return Zero3Units(positions, root - positions - shape.vocab * C * len(vocabulary), blocks, vocabulary)
    if shape.tied:
        return Zero3Units(0, root, blocks, [])
    input_elements = vocab_rows(shape.vocab, tp) * C + positions
    return Zero3Units(input_elements, root - input_elements, blocks, [])


def parameter_count(shape: ModelShape, tp: int = 1) -> int:
    root, blocks = parameter_units(shape, tp)
    return root + sum(blocks)


def matmul_parameters(shape: ModelShape) -> int:
    """Parameters that take part in a matrix product per token: every block's weights
    and the head (V x C); not the embedding lookups, norms or biases, which cost
    O(1) FLOPs a parameter."""
    C, I = shape.width, shape.intermediate
    if shape.family == "gpt2":
        per_block = 4 * C * C + 2 * C * I
    else:
        q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        per_block = 2 * C * q + 2 * C * kv + 3 * C * I
    return shape.layers * per_block + shape.vocab * C


# ---------------------------------------------------------------------------------
# FLOPs


def flops_per_token(matmul_params: int, layers: int, width: int, seq_len: int, recompute: bool = False) -> float:
    """Training FLOPs per token: 6N for the matrix products (2N forward, 4N backward)
    plus 12 L C S for attention's scores and weighted sum (QK^T and AV, 2 S C each in
    the forward of a layer, counted over the whole S x S matrix as PaLM's MFU does).
    Recomputing each block in the backward pass (activation checkpointing) adds one
    forward: 8N + 16 L C S."""
    passes = 4 if recompute else 3
    return passes * (2 * matmul_params + 4 * layers * width * seq_len)


# ---------------------------------------------------------------------------------
# A layout and a step


@dataclass(frozen=True)
class Layout:
    """One run: how many ranks, how they are split, and what one step processes."""
    ranks: int
    tp: int = 1
    zero: int = 0
    micro_batch_size: int = 1      # B, sequences per rank per micro-step
    global_batch_size: int = 1     # sequences per optimizer step over all dp ranks
    seq_len: int = 1024            # S
    activation_checkpointing: bool = False
    reduce_dtype_bytes: int = FP32      # train.reduce_dtype: fp32 4, bf16 2
    activation_dtype_bytes: int = FP32  # train.precision: fp32 4, bf16/fp16 2 (autocast)
    transport: str = "mpi"         # "mpi" (CPU tensors) or "nccl" (GPU tensors)
    bucket_mb: float = 25          # dist.bucket_mb
    overlap: bool = True           # dist.overlap: gradient reductions start during the backward pass

    @property
    def dp(self) -> int:
        return self.ranks // self.tp

    @property
    def grad_wire_bytes(self) -> int:
        """Bytes a gradient element travels in: MPI sums 16-bit values as fp32 and sends fp32."""
        return FP32 if self.transport == "mpi" else self.reduce_dtype_bytes

    @property
    def activation_wire_bytes(self) -> int:
        return FP32 if self.transport == "mpi" else self.activation_dtype_bytes

    @property
    def accumulation(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp)

    def validate(self) -> None:
        if self.tp < 1 or self.ranks % self.tp:
            raise ValueError(f"tp {self.tp} does not divide {self.ranks} ranks")
        if self.transport not in ("mpi", "nccl"):
            raise ValueError(f"transport must be mpi or nccl, got '{self.transport}'")
        if self.zero not in (0, 1, 2, 3):
            raise ValueError(f"ZeRO stage must be 0..3, got {self.zero}")
        if self.global_batch_size % (self.micro_batch_size * self.dp):
            raise ValueError(f"global batch {self.global_batch_size} is not a multiple of micro-batch "
                             f"{self.micro_batch_size} x dp {self.dp}")


def ring_fraction(n: int) -> float:
    return (n - 1) / n


def zero_shard(elements: int, dp: int) -> int:
    """Elements per rank of a flat space padded to a multiple of N."""
    return -(-elements // dp)


def tp_activation_elements(shape: ModelShape, layout: Layout) -> tuple[int, int]:
    """Elements all-reduced over the tensor-parallel group per micro-batch: (activations,
    vocabulary-parallel loss values). Megatron's layers: the embedding's output, two per
    layer forward (attention and MLP outputs) and two backward (their inputs'
    gradients), the head's input gradient; the loss all-reduces 3 values per target
    (max, sum of exp, target logit) over B (S-1) targets."""
    B, S, C, L = layout.micro_batch_size, layout.seq_len, shape.width, shape.layers
    return (4 * L + 2) * B * S * C, 3 * B * (S - 1)


@dataclass
class Traffic:
    """What one rank sends in one step, by group, as ftrain's CommStats counts it
    (2 (n-1)/n of the buffer for an all-reduce, (n-1)/n for reduce-scatter and
    all-gather), and how many collectives carry it (their latency)."""
    tp_bytes: float = 0
    tp_calls: int = 0
    dp_bytes: float = 0
    dp_calls: int = 0
    dp_ring_steps: int = 0   # sequential ring steps: 2 (n-1) per all-reduce, n-1 per gather or scatter
    tp_ring_steps: int = 0
    scalar_bytes: float = 0  # the scalar all-reduces of the step (token count, loss, gradient norm)
    dp_overlappable_bytes: float = 0  # the part that can run under compute (buckets, blocks' collectives)

    @property
    def total_bytes(self) -> float:
        return self.tp_bytes + self.dp_bytes + self.scalar_bytes


def step_traffic(shape: ModelShape, layout: Layout) -> Traffic:
    """Per-step communication of rank 0, as ftrain counts it in metrics.jsonl's comm_bytes."""
    layout.validate()
    T, N, accumulation = layout.tp, layout.dp, layout.accumulation
    traffic = Traffic()
    if T > 1:
        activations, loss_values = tp_activation_elements(shape, layout)
        per_micro_batch = activations * layout.activation_wire_bytes + loss_values * FP32
        calls = 4 * shape.layers + 2 + 3
        replicas = T // shape.kv_heads if shape.family == "llama" and T > shape.kv_heads else 1
        if replicas > 1:
            # More ranks than key/value heads: each head is held by `replicas` ranks, and
            # the backward pass sums the copies' fp32 gradients of k_proj and v_proj
            # (weight, bias) with one all-reduce over the tp group of a slot per head.
            per_head = shape.head_dim * (shape.width + shape.attention_bias)
            per_micro_batch += shape.layers * 2 * shape.kv_heads * per_head * FP32
            calls += shape.layers * 2 * (1 + shape.attention_bias)
        traffic.tp_bytes = accumulation * 2 * ring_fraction(T) * per_micro_batch
        traffic.tp_calls = accumulation * calls
        traffic.tp_ring_steps = traffic.tp_calls * 2 * (T - 1)
    if N > 1:
        root, blocks = parameter_units(shape, T)
        psi = root + sum(blocks)
        f = ring_fraction(N)
        grad, param = layout.grad_wire_bytes, FP32
        units = [root, *blocks]
        padded_root = zero_shard(root, N) * N
        padded_blocks = sum(zero_shard(b, N) * N for b in blocks)
        padded = padded_root + padded_blocks
        if layout.zero == 0:
            # Buckets of dist.bucket_mb of parameters, all-reduced: 2 psi (N-1)/N.
            traffic.dp_bytes = 2 * f * psi * grad
            traffic.dp_calls = max(1, math.ceil(psi * FP32 / (layout.bucket_mb * 2**20)))
            traffic.dp_ring_steps = traffic.dp_calls * 2 * (N - 1)
            traffic.dp_overlappable_bytes = traffic.dp_bytes if layout.overlap else 0
        elif layout.zero == 1:
            # Per unit (the root, each block), each padded to a multiple of N: a
            # reduce-scatter of the accumulated gradients (the blocks' during the last
            # backward pass with overlap), an all-gather of the updated parameters.
            traffic.dp_bytes = f * padded * (grad + param)
            traffic.dp_calls = 2 * len(units)
            traffic.dp_ring_steps = traffic.dp_calls * (N - 1)
            traffic.dp_overlappable_bytes = f * padded_blocks * grad if layout.overlap else 0
        elif layout.zero == 2:
            # Per unit: a reduce-scatter of its gradients in every micro-batch (the
            # blocks' during backward with overlap), an all-gather of the updated
            # parameters once per step.
            traffic.dp_bytes = f * padded * (accumulation * grad + param)
            traffic.dp_calls = (accumulation + 1) * len(units)
            traffic.dp_ring_steps = traffic.dp_calls * (N - 1)
            traffic.dp_overlappable_bytes = accumulation * f * padded_blocks * grad if layout.overlap else 0
        else:
            # Per block and micro-batch: all-gather for the forward, again for the
            # backward (both prefetched), reduce-scatter of its gradients (during
            # backward with overlap); the root once per step. With an untied head, per
            # micro-batch: the input unit gathered for the forward and for its backward
            # and reduced, the root (norm, head) gathered and reduced.
            z = zero3_units(shape, T)
            input_elements, tail = z.input, z.root
            if input_elements:
                padded_input = zero_shard(input_elements, N) * N
                padded_tail = zero_shard(tail, N) * N
                traffic.dp_bytes = accumulation * f * ((padded_blocks + padded_input) * (2 * param + grad)
                                                       + padded_tail * (param + grad))
                traffic.dp_calls = accumulation * (3 * len(blocks) + 5)
                traffic.dp_overlappable_bytes = accumulation * f * (padded_blocks * (2 * param + grad * layout.overlap)
                                                                    + padded_tail * (param + grad * layout.overlap))
            else:
                padded_tail = zero_shard(tail, N) * N
                traffic.dp_bytes = (accumulation * f * padded_blocks * (2 * param + grad)
                                    + f * padded_tail * (param + grad))
                traffic.dp_calls = accumulation * 3 * len(blocks) + 2
                traffic.dp_overlappable_bytes = accumulation * f * padded_blocks * (2 * param + grad * layout.overlap)
            if z.vocabulary:
                # Each vocabulary pass gathers or reduce-scatters the matrix once, window by
                # window: (N-1)/N of N W Rw rows. They run in the loss and the embedding,
                # between blocks: none overlaps.
                rows, columns = z.vocabulary[0]
                largest_block = max((zero_shard(b, N) * N * FP32 for b in blocks), default=STREAM_WINDOW_BYTES)
                windows, window_rows = stream_windows(rows, columns, N, min(STREAM_WINDOW_BYTES, largest_block // 4))
                matrix = N * windows * window_rows * columns
                traffic.dp_bytes += accumulation * f * matrix * (VOCABULARY_GATHERS * param
                                                                 + VOCABULARY_REDUCTIONS * grad)
                traffic.dp_calls += accumulation * (VOCABULARY_GATHERS + VOCABULARY_REDUCTIONS) * windows
            traffic.dp_ring_steps = traffic.dp_calls * (N - 1)
    # Scalars travel as 8 bytes: the step's token count and loss over dp; the gradient
    # norm's square sum over dp when ZeRO shards the gradients, over tp when split.
    scalar = 8
    traffic.scalar_bytes = 2 * ring_fraction(N) * scalar * (2 + (layout.zero > 0))
    if T > 1:
        traffic.scalar_bytes += 2 * ring_fraction(T) * scalar
    return traffic


def comm_bytes_per_step(shape: ModelShape, layout: Layout) -> float:
    """What metrics.jsonl's comm_bytes holds for every step of this run."""
    return step_traffic(shape, layout).total_bytes


# ---------------------------------------------------------------------------------
# Memory


def own_elements(elements: int, dp: int, dp_rank: int) -> int:
    """Elements of a flat space of `elements` (padded to a multiple of N, padding at the
    end) that lie in shard `dp_rank`: the ones its optimizer updates."""
    shard = zero_shard(elements, dp)
    return max(0, min(shard, elements - dp_rank * shard))


def training_state_bytes(shape: ModelShape, layout: Layout, rank: int = 0) -> dict[str, int]:
    """Bytes of parameters, gradients and AdamW moments `rank` holds (at ZeRO-2/3 the peaks
    of a step), exactly as ftrain's memory record counts them: fp32, flat buffers padded
    to a multiple of N, the gradient buckets of plain data parallelism."""
    layout.validate()
    T, N = layout.tp, layout.dp
    dp_rank = rank // T  # rank = dp_rank * tp + tp_rank
    root, blocks = parameter_units(shape, T)
    psi = root + sum(blocks)
    if layout.zero == 0:
        buckets = psi * layout.reduce_dtype_bytes if N > 1 else 0  # the buckets hold reduce_dtype
        return {"parameter_bytes": FP32 * psi, "gradient_bytes": FP32 * psi + buckets,
                "optimizer_bytes": 2 * FP32 * psi}
    units = [root, *blocks]
    shards = sum(zero_shard(u, N) for u in units)
    full = [zero_shard(u, N) * N for u in units]
    optimizer = 2 * FP32 * sum(own_elements(u, N, dp_rank) for u in units)
    if layout.zero == 1:
        # Whole parameters and gradients (the reduced shard lands in the gradients).
        return {"parameter_bytes": FP32 * sum(full), "gradient_bytes": FP32 * sum(full),
                "optimizer_bytes": optimizer}
    # Full gradients held at once during the backward pass: the root's and a block's,
    # with overlap also the block after it, still being reduce-scattered.
    pair = max((full[i] + full[i + 1] for i in range(1, len(full) - 1)), default=max(full[1:], default=0))
    held = full[0] + (pair if layout.overlap else max(full[1:], default=0))
    if layout.zero == 2:
        # Whole parameters; the shard's reduced gradients plus the full ones held.
        return {"parameter_bytes": FP32 * sum(full), "gradient_bytes": FP32 * (shards + held),
                "optimizer_bytes": optimizer}
    z = zero3_units(shape, T)
    input_elements, tail = z.input, z.root
    if z.vocabulary:
        # The vocabulary units hold their rows' shard and are never gathered whole.
        vocabulary_elements = [rows * columns for rows, columns in z.vocabulary]
        shards_of = [-(-rows // N) * columns for rows, columns in z.vocabulary]
        vocabulary_shards = sum(shards_of)
        vocabulary_optimizer = 2 * FP32 * sum(max(0, min(shard, elements - dp_rank * shard))
                                              for shard, elements in zip(shards_of, vocabulary_elements))
    else:
        vocabulary_shards = vocabulary_optimizer = 0
    if not input_elements:
        # Gathered at once: the root from the first forward to the gradient reduction,
        # and two neighbouring blocks (one running, the next prefetched).
        units = [tail, *blocks]
        shards = sum(zero_shard(u, N) for u in units) + vocabulary_shards
        optimizer = 2 * FP32 * sum(own_elements(u, N, dp_rank) for u in units) + vocabulary_optimizer
        root_full = zero_shard(tail, N) * N
        held = root_full + (pair if layout.overlap else max(full[1:], default=0))
        return {"parameter_bytes": FP32 * (shards + root_full + pair), "gradient_bytes": FP32 * (shards + held),
                "optimizer_bytes": optimizer}
    # The root split: the input unit (embeddings) and the root (norm, head) are never
    # gathered together. Gathered at once: the input alone (the forward's start, its
    # backward), two neighbouring blocks, or the root with the last block (prefetched as
    # it starts). Gradients: the root's, the input's, or a block's; with overlap each
    # also with the unit reduced before it, still in flight.
    units = [tail, *blocks, input_elements]
    shards = sum(zero_shard(u, N) for u in units) + vocabulary_shards
    optimizer = 2 * FP32 * sum(own_elements(u, N, dp_rank) for u in units) + vocabulary_optimizer
    root_full, input_full = zero_shard(tail, N) * N, zero_shard(input_elements, N) * N
    block_full = full[1:]
    gathered = max(input_full, pair, root_full + block_full[-1])
    if layout.overlap:
        held = max(root_full + block_full[-1], pair, block_full[0] + input_full)
    else:
        held = max(root_full, max(block_full), input_full)
    return {"parameter_bytes": FP32 * (shards + gathered), "gradient_bytes": FP32 * (shards + held),
            "optimizer_bytes": optimizer}


def activation_bytes(shape: ModelShape, layout: Layout) -> float:
    """Activations one rank keeps for the backward pass of one micro-batch (Korthikanti
    et al., 2022, tensor parallelism without sequence parallelism), for 16-bit values
    (scaled for fp32): per layer S B C (10 + 24/T + 5 a S / (C T)) bytes. With
    activation checkpointing, each layer keeps its input (2 S B C bytes) and one layer at
    a time is whole. The logits of the loss (fp32, V/T columns) come on top."""
    S, B, C, L, T = layout.seq_len, layout.micro_batch_size, shape.width, shape.layers, layout.tp
    per_layer = S * B * C * (10 + 24 / T + 5 * shape.heads * S / (C * T))
    scale = layout.activation_dtype_bytes / 2
    logits = B * S * vocab_rows(shape.vocab, T) * FP32 * 2  # logits and their gradient
    if layout.activation_checkpointing:
        return scale * (2 * S * B * C * L + per_layer) + logits
    return scale * L * per_layer + logits


def largest_tensor_elements(shape: ModelShape) -> int:
    """Elements of the model's largest whole tensor (the token embedding or head, or an
    MLP matrix): what one phase holds beside the sharded state when it moves the model
    one tensor at a time."""
    return max(shape.vocab * shape.width, shape.intermediate * shape.width, 3 * shape.width * shape.width)


def phase_peak_bytes(shape: ModelShape, layout: Layout) -> dict[str, float]:
    """Predicted peak bytes per rank of each phase of a job (rank 0), as ftrain does them
    (docs/training.md, "What is sharded in which phase"); largest = one whole tensor in fp32:
      load:   ZeRO-3: this rank's shards of the parameters and of the gradients, plus one
              tensor read at a time; otherwise its whole tensor-parallel part of the
              parameters plus one tensor
      resume: the training state, plus one tensor's part and its pieces (2 tensors)
      step:   the training state at its step peak, plus the activations
      export: the state less the moments (freed first), plus one gathered whole tensor
              and its transposed copy (2 tensors)"""
    state = training_state_bytes(shape, layout)
    root, blocks = parameter_units(shape, layout.tp)
    psi = root + sum(blocks)
    one = FP32 * largest_tensor_elements(shape)
    if layout.zero == 3:
        z = zero3_units(shape, layout.tp)
        units = [z.root, *blocks] + ([z.input] if z.input else [])
        shards = sum(zero_shard(u, layout.dp) for u in units) + z.vocabulary_shard(layout.dp)
        load = FP32 * 2 * shards + one
    else:
        load = FP32 * psi + one
    total = state["parameter_bytes"] + state["gradient_bytes"] + state["optimizer_bytes"]
    return {"load_bytes": load,
            "resume_bytes": total + 2 * one,
            "step_bytes": total + activation_bytes(shape, layout),
            "export_bytes": total - state["optimizer_bytes"] + 2 * one}


# ---------------------------------------------------------------------------------
# Time


@dataclass(frozen=True)
class Hardware:
    """Nodes of GPUs joined by a fast link inside a node and a network between nodes.
    Bandwidths are what one GPU can send at once (bytes/s, one direction); alpha is the
    latency of one ring step (s)."""
    name: str = "H100 SXM, 8 per node, NVLink 4, 8x400 Gb/s InfiniBand NDR"
    gpus_per_node: int = 8
    intra_bandwidth: float = 450e9    # NVLink 4: 900 GB/s both directions per GPU
    intra_alpha: float = 3e-6
    inter_bandwidth: float = 50e9     # one 400 Gb/s NDR port per GPU
    inter_alpha: float = 8e-6
    peak_flops: float = 989e12        # dense bf16 per GPU
    mfu: float = 0.4                  # fraction of peak the matrix products reach
    memory_bytes: float = 80e9        # per GPU
    overlap: float = 1.0              # fraction of the compute that can hide overlappable traffic
    micro_batch_overhead: float = 0.0  # s per micro-batch beyond its FLOPs (dispatch, launches); 0 on big GPUs

    def link(self, group_span_ranks: int) -> tuple[float, float]:
        """(bandwidth, alpha) of a ring over a group whose ranks span this many
        consecutive ranks: inside a node, or across nodes (the slowest link sets the pace)."""
        if group_span_ranks <= self.gpus_per_node:
            return self.intra_bandwidth, self.intra_alpha
        return self.inter_bandwidth, self.inter_alpha


def collective_time(kind: str, buffer_bytes: float, n: int, bandwidth: float, alpha: float) -> float:
    """Alpha-beta time of one ring collective over n ranks of a buffer (the full buffer:
    the input of a reduce-scatter, the output of an all-gather):
      all_reduce                   2 (n-1)/n bytes / bw + 2 (n-1) alpha
      reduce_scatter, all_gather     (n-1)/n bytes / bw +   (n-1) alpha"""
    if n <= 1:
        return 0.0
    steps = {"all_reduce": 2, "reduce_scatter": 1, "all_gather": 1}[kind]
    return steps * ((n - 1) / n * buffer_bytes / bandwidth + (n - 1) * alpha)


@dataclass
class Prediction:
    layout: Layout
    flops_per_rank: float
    compute_s: float
    tp_comm_s: float
    dp_comm_s: float        # exposed (not hidden under compute)
    step_s: float
    tokens_per_s_per_rank: float
    achieved_mfu: float
    comm_bytes: float
    memory: dict = field(default_factory=dict)

    def row(self) -> dict:
        return {"ranks": self.layout.ranks, "tp": self.layout.tp, "dp": self.layout.dp, "zero": self.layout.zero,
                "micro_batch_size": self.layout.micro_batch_size, "global_batch_size": self.layout.global_batch_size,
                "accumulation": self.layout.accumulation, "seq_len": self.layout.seq_len,
                "activation_checkpointing": self.layout.activation_checkpointing,
                "compute_s": self.compute_s, "tp_comm_s": self.tp_comm_s, "dp_comm_s": self.dp_comm_s,
                "step_s": self.step_s, "tokens_per_s_per_rank": self.tokens_per_s_per_rank,
                "achieved_mfu": self.achieved_mfu, "comm_bytes": self.comm_bytes, **self.memory}


def predict(shape: ModelShape, layout: Layout, hardware: Hardware) -> Prediction:
    """Step time of one layout: compute at mfu x peak, plus the tensor-parallel
    all-reduces (inside the step's critical path), plus the data-parallel traffic not
    hidden under compute (overlap x compute hides what runs beside it: the ZeRO-0
    buckets, the blocks' reduce-scatters at every ZeRO stage with dist.overlap, and the
    ZeRO-3 block gathers; the root's reduction and the parameters' all-gather after the
    step at ZeRO-1/2 are exposed)."""
    traffic = step_traffic(shape, layout)
    tokens = layout.global_batch_size * layout.seq_len
    flops = tokens * flops_per_token(matmul_parameters(shape), shape.layers, shape.width, layout.seq_len,
                                     layout.activation_checkpointing) / layout.ranks
    compute = flops / (hardware.peak_flops * hardware.mfu) + layout.accumulation * hardware.micro_batch_overhead
    tp_bandwidth, tp_alpha = hardware.link(layout.tp)
    # A dp group holds every tp-th rank: it spans the whole job.
    dp_bandwidth, dp_alpha = hardware.link(layout.ranks if layout.dp > 1 else 1)
    tp_time = traffic.tp_bytes / tp_bandwidth + traffic.tp_ring_steps * tp_alpha
    dp_time = (traffic.dp_bytes + traffic.scalar_bytes) / dp_bandwidth + traffic.dp_ring_steps * dp_alpha
    hideable = traffic.dp_overlappable_bytes / dp_bandwidth
    hidden = min(hideable, hardware.overlap * compute)
    exposed = dp_time - hidden
    step = compute + tp_time + exposed
    memory = training_state_bytes(shape, layout)
    memory["activation_bytes"] = activation_bytes(shape, layout)
    memory["total_bytes"] = sum(memory.values())
    # Every phase must fit, not only the steps: the load, the resume and the export too.
    phases = phase_peak_bytes(shape, layout)
    memory.update(phases)
    memory["peak_phase"] = max(phases, key=phases.get).removesuffix("_bytes")
    memory["peak_bytes"] = max(phases.values())
    memory["fits"] = memory["peak_bytes"] <= hardware.memory_bytes
    model_flops = tokens * flops_per_token(matmul_parameters(shape), shape.layers, shape.width, layout.seq_len)
    return Prediction(layout, flops, compute, tp_time, exposed, step, tokens / step / layout.ranks,
                      model_flops / (step * layout.ranks * hardware.peak_flops), traffic.total_bytes, memory)


# ---------------------------------------------------------------------------------
# Calibration against measured runs


def calibrate(points: list[dict], name: str) -> Hardware:
    """A Hardware whose compute rate, per-micro-batch overhead, bandwidth and latency best
    explain measured steps. Each point: {"flops_per_rank", "micro_batches", "comm_bytes",
    "ring_steps", "step_s"}; the fit is
        step_s = flops / rate + micro_batches * overhead + comm_bytes / bandwidth + ring_steps * alpha
    with every coefficient non-negative, by least absolute deviations, so that a run
    slowed by a busy machine does not set the link's speed. One node, no overlap: MPI
    over shared memory."""
    import numpy as np
    columns = ("flops_per_rank", "micro_batches", "comm_bytes", "ring_steps")
    A = np.array([[p[c] for c in columns] for p in points], dtype=float)
    y = np.array([p["step_s"] for p in points], dtype=float)
    inverse_rate, overhead, inverse_bandwidth, alpha = _nonnegative_least_deviations(A, y)
    if inverse_rate == 0:
        # One model size: FLOPs and micro-batches per rank are proportional, and the fit
        # may put all compute into the overhead. Compute is FLOPs then.
        inverse_rate, inverse_bandwidth, alpha = _nonnegative_least_deviations(A[:, [0, 2, 3]], y)
        overhead = 0.0
    if inverse_rate == 0:
        raise ValueError("calibration: the runs' step times do not grow with their FLOPs")
    # Traffic that took no measurable time: a link as fast as memory.
    bandwidth = 1 / inverse_bandwidth if inverse_bandwidth > 0 else 1e12
    return Hardware(name=name, gpus_per_node=1 << 20, intra_bandwidth=bandwidth, intra_alpha=alpha,
                    inter_bandwidth=bandwidth, inter_alpha=alpha, peak_flops=1 / inverse_rate, mfu=1.0,
                    memory_bytes=float("inf"), overlap=0.0, micro_batch_overhead=overhead)


def _nonnegative_least_deviations(A, y, iterations: int = 100):
    """min sum |A x - y| over x >= 0, by iteratively reweighted least squares. Each
    weighted problem is solved exactly for a handful of unknowns: the best
    non-negative unconstrained solution over every subset of the columns."""
    import itertools
    import numpy as np
    scale = np.maximum(np.abs(A).max(axis=0), 1e-300)  # columns of very different magnitude
    A = A / scale
    n = A.shape[1]
    subsets = [s for k in range(1, n + 1) for s in itertools.combinations(range(n), k)]
    weights = np.ones(len(y))
    x = np.zeros(n)
    floor = 1e-6 * max(float(np.abs(y).max()), 1e-12)
    for _ in range(iterations):
        root = np.sqrt(weights)
        best, best_cost = np.zeros(n), float(np.sum(weights * y**2))
        for subset in subsets:
            solution, *_ = np.linalg.lstsq(A[:, subset] * root[:, None], y * root, rcond=None)
            if (solution < 0).any():
                continue
            candidate = np.zeros(n)
            candidate[list(subset)] = solution
            cost = float(np.sum(weights * (A @ candidate - y) ** 2))
            if cost < best_cost:
                best, best_cost = candidate, cost
        if np.allclose(best, x, rtol=1e-9, atol=0):
            break
        x = best
        weights = 1 / np.maximum(np.abs(A @ x - y), floor)
    return tuple(float(v) for v in x / scale)


def hardware_from_dict(values: dict, base: Hardware = Hardware()) -> Hardware:
    """`base` with the given fields replaced; an unknown field is an error naming it."""
    names = {f.name for f in dataclasses.fields(Hardware)}
    for key in values:
        if key not in names:
            raise ValueError(f"hardware: unknown key '{key}' (known: {', '.join(sorted(names))})")
    return dataclasses.replace(base, **values)
