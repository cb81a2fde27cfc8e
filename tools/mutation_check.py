#!/usr/bin/env python3
"""Mutation check: apply one deliberate bug at a time to a scratch copy of the tree and run the tests that
should catch it; each must turn red. Proves the suite catches what it claims.

    uv run python tools/mutation_check.py [WORD ...]     # only the mutations whose description has a WORD
"""
import pathlib
import shutil
import subprocess
import sys
import tempfile

SRC = pathlib.Path(__file__).resolve().parents[1]
DST = pathlib.Path(tempfile.mkdtemp(prefix="cnn-cifar-mutants-")) / "tree"
MUTATIONS = [
    ("garbage in max-pool's uncovered dx", "src/cnn_cifar/nn/pooling.py",
     "dx = xp.empty(pshape, dtype=dy.dtype) if tiled else xp.zeros(pshape, dtype=dy.dtype)",
     "dx = xp.empty(pshape, dtype=dy.dtype) if tiled else xp.full(pshape, 7.0, dtype=dy.dtype)",
     "tests/test_layers_gradcheck.py -k pool_gradients"),
    ("wrong dilation offset in im2col (dilation ignored on the W axis)", "src/cnn_cifar/nn/im2col.py",
     "left = y0 * self.sh + i * self.dh, x0 * self.sw + j * self.dw",
     "left = y0 * self.sh + i * self.dh, x0 * self.sw + j * self.dh",
     "tests/test_layers_reference.py -k conv2d_forward"),
    ("SimpleCNN's default lr changed", "src/cnn_cifar/models/simple_cnn.py",
     'optimizer="sgd", lr=0.02,', 'optimizer="sgd", lr=0.03,', "tests/test_cli_settings.py -k defaults"),
    ("ResNet's Nesterov default changed", "src/cnn_cifar/models/resnet.py",
     "momentum=0.9, nesterov=True,", "momentum=0.9, nesterov=False,", "tests/test_cli_settings.py -k defaults"),
    ("crash in the progress-bar postfix", "src/cnn_cifar/training/hooks.py",
     "acc=f\"{100 * p['correct'] / p['seen']:.2f}%\"", "acc=f\"{100 * p['correct'] / 0:.2f}%\"",
     "tests/test_cli_settings.py -k non_quiet"),
    ("symlink members accepted", "src/cnn_cifar/data/download.py",
     "if m.issym() or m.islnk() or m.isdev() or m.isfifo():", "if m.islnk() or m.isdev() or m.isfifo():",
     "tests/test_extract_safety.py -k symlink"),
    ("cnn_last.pkl overwritten on NaN", "src/cnn_cifar/training/trainer.py",
     "                except NonFiniteLoss as exc:\n",
     "                except NonFiniteLoss as exc:\n                    save_checkpoint(self.last_path, self.checkpoint())\n",
     "tests/test_interrupts.py tests/test_cli.py tests/test_training.py -k nan"),
    ("default backend flipped to auto", "src/cnn_cifar/backend.py",
     'set_backend(os.environ.get(ENV_VAR, "").strip() or "numpy")', 'set_backend(os.environ.get(ENV_VAR, "").strip() or "auto")',
     "tests/test_backend.py"),
    ("matplotlib backend chosen at import again", "src/cnn_cifar/viz/plots.py",
     "import matplotlib\n", "import matplotlib\nmatplotlib.use(\"Agg\")\n", "tests/test_structure.py -k importing"),
    ("allocator tuned at import again", "src/cnn_cifar/runtime.py",
     "    return {\"host_allocator\": tune_host_allocator()}\n",
     "    return {\"host_allocator\": tune_host_allocator()}\n\n\ntune_host_allocator()\n", "tests/test_structure.py -k importing"),
    ("padding buffer keyed by shape only", "src/cnn_cifar/runtime.py",
     'key = ("pad", shape, (ph, pw), float(value)', 'key = ("pad", shape, float(value)', "tests/test_layers_reference.py -k padding_buffers"),
    ("dropout keeps its mask under no_grad (save bypassing the rule)", "src/cnn_cifar/nn/dropout.py",
     "        self.save_for_backward(mask)\n", "        object.__setattr__(self, '_saved', (mask,))\n", "tests/test_structure.py -k no_grad"),
    ("np.asarray on a device array (CuPy path)", "src/cnn_cifar/training/evaluation.py",
     "        sums = backend.to_numpy(device)\n", "        sums = np.asarray(device)\n",
     "tests/test_gpu_path.py -k test_cli_on_cupy"),
    ("a NumPy-only function on the CuPy path", "src/cnn_cifar/nn/loss.py",
     "logp = z - xp.log(s)", "logp = z - __import__('numpy').log(s)", "tests/test_layers_gradcheck.py -k softmax"),
    ("no .get() before saving a checkpoint", "src/cnn_cifar/nn/module.py",
     "out[_join(name, key)] = backend.to_numpy(p.data).copy()", "out[_join(name, key)] = p.data.copy()",
     "tests/test_gpu_path.py -k test_cli_on_cupy"),
    ("a per-step host read (float) in the train step", "src/cnn_cifar/training/step.py",
     "        model.backward(criterion.backward())\n        optimizer.step(only_if",
     "        float(logits.sum())\n        model.backward(criterion.backward())\n        optimizer.step(only_if",
     "tests/test_gpu_path.py -k budget"),
    ("the device dropout stream's position not restored on resume", "src/cnn_cifar/nn/random.py",
     '        _state["key"], _state["draws"] = int(state["key"]), int(state.get("draws", 0))', "        pass",
     "tests/test_gpu_path.py -k test_cli_on_cupy"),
    ("resume after Ctrl-C in evaluation replays the epoch's stream", "src/cnn_cifar/training/trainer.py",
     "        elif self.step < len(self.train_loader):", "        else:", "tests/test_interrupts.py -k resume"),
    ("synchronised batch norm divides by the local count", "src/cnn_cifar/nn/norm.py",
     "        sums /= count\n", "        sums /= count / group.size\n", "tests/test_distributed.py -k synchronised"),
    ("every rank's BN statistics summed, not rank 0's", "src/cnn_cifar/distributed/data_parallel.py",
     "flat[off:off + b.size] = b.reshape(-1) if main else 0", "flat[off:off + b.size] = b.reshape(-1)",
     "tests/test_distributed.py -k steps_equal"),
    ("depthwise weight gradient of the wrong tap", "src/cnn_cifar/nn/depthwise.py",
     'dw[:, i, j] = xp.einsum("chwn,chwn->c", dy, xpad[:, rows, cols])',
     'dw[:, j, i] = xp.einsum("chwn,chwn->c", dy, xpad[:, rows, cols])', "tests/test_zoo.py -k depthwise"),
    ("a replaced parameter array not taken back into the flat buffer", "src/cnn_cifar/optim/optimizers.py",
     "        if stale:\n            self._adopt(stale)", "        if stale:\n            pass",
     "tests/test_optim.py -k flat_buffers"),
    ("the loss scale kept after an overflow", "src/cnn_cifar/optim/grad_scaler.py",
     "            self.scale_value *= self.backoff_factor\n", "            self.scale_value *= 1.0\n",
     "tests/test_amp.py -k skips_overflowing"),
    ("gradients left scaled after unscale_", "src/cnn_cifar/optim/grad_scaler.py",
     "            g.grad *= inv\n", "            g.grad *= 1.0\n", "tests/test_amp.py -k unscale"),
    ("batch norm computing in float16 under autocast", "src/cnn_cifar/nn/norm.py",
     "return x if x.dtype.itemsize >= wide.itemsize else x.astype(wide)", "return x",
     "tests/test_amp.py -k batchnorm_statistics"),
    ("the loss scale not saved with the checkpoint", "src/cnn_cifar/training/trainer.py",
     '            optimizer["grad_scaler"] = self.scaler.state_dict()', '            pass',
     "tests/test_amp.py -k train_cli_amp"),
    ("a sign flipped in batch norm's fused GPU backward", "src/cnn_cifar/nn/kernels.py",
     "(_gated(dy, gate) - (dbeta + xhat * dgamma) * inv_m))", "(_gated(dy, gate) - (dbeta - xhat * dgamma) * inv_m))",
     "tests/test_gpu_path.py -k batchnorm_device"),
    ("the fused ReLU's gate ignored by batch norm's GPU backward", "src/cnn_cifar/nn/kernels.py",
     "    return np.where(gate > 0, dy, 0)\n", "    return dy\n", "tests/test_gpu_path.py -k batchnorm_device"),
    ("the fused ReLU's gate ignored by batch norm's host backward", "src/cnn_cifar/nn/norm.py",
     "            dy2 = d\n", "            pass\n", "tests/test_layers_gradcheck.py -k fused"),
    ("the batch count not advanced by the GPU's statistics kernel", "src/cnn_cifar/nn/kernels.py",
     "mom * v * (m / (m - 1)), tracked + 1", "mom * v * (m / (m - 1)), tracked",
     "tests/test_gpu_path.py -k batchnorm_device"),
    ("the fused ReLU's gate kept as a float32 copy under autocast", "src/cnn_cifar/nn/norm.py",
     "        self._keep_narrow_gate(rows(out))\n", "", "tests/test_amp.py -k fused"),
    ("a float16 gate handed to float32 GPU kernels under autocast", "src/cnn_cifar/nn/norm.py",
     "            gate = gate.astype(dy2.dtype)\n", "            pass\n", "tests/test_amp.py -k fused"),
    ("the Welford merge dropping the between-part term's count", "src/cnn_cifar/nn/kernels.py",
     "    r.m2 = a.m2 + b.m2 + d * d * a.n * f;", "    r.m2 = a.m2 + b.m2 + d * d * f;",
     "tests/test_gpu_path.py -k reduction_types"),
    ("the GPU batch count advanced once per channel", "src/cnn_cifar/nn/kernels.py",
     "    if (channel == 0) tracked += 1;", "    tracked += 1;", "tests/test_gpu_path.py -k reduction_types"),
    ("a sign flipped in batch norm's backward CUDA body (the reference right)", "src/cnn_cifar/nn/kernels.py",
     '" - (dbeta + xhat * dgamma) * inv_m)", "cnn_bn_backward"', '" - (dbeta - xhat * dgamma) * inv_m)", "cnn_bn_backward"',
     "tests/test_gpu_path.py -k every_cuda_body"),
    ("dilation ignored on the rows by im2col's CUDA body", "src/cnn_cifar/nn/kernels.py",
     "    const int yy = yo * SH + ki * DH - PH;", "    const int yy = yo * SH + ki - PH;",
     "tests/test_gpu_path.py -k every_cuda_body"),
    ("Nesterov ignored by the SGD update's CUDA body", "src/cnn_cifar/nn/kernels.py",
     "p -= lr * (nesterov ? d + mu * v : v); }", "p -= lr * v; }", "tests/test_gpu_path.py -k every_cuda_body"),
    ("the GPU conv weight gradient overwritten, not accumulated, by cuBLAS", "src/cnn_cifar/nn/conv.py",
     "out=self.weight.grad.reshape(o, -1), beta=1.0)", "out=self.weight.grad.reshape(o, -1), beta=0.0)",
     "tests/test_layers_semantics.py -k accumulate"),
    ("running variance not unbiased on the GPU", "src/cnn_cifar/nn/kernels.py",
     "mom * v * (m / (m - 1)), tracked + 1", "mom * v, tracked + 1", "tests/test_gpu_path.py -k batchnorm_device"),
    ("the GPU's gradient sums not added into the parameters' gradients", "src/cnn_cifar/nn/kernels.py",
     "    return sb, sg, wgrad + sg, bgrad + sb\n", "    return sb, sg, wgrad, bgrad + sb\n",
     "tests/test_gpu_path.py -k batchnorm_device"),
    ("overlapping columns overwritten, not summed, in the GPU col2im", "src/cnn_cifar/nn/kernels.py",
     "        acc[:, hs, ws] += c6[:, i, j]", "        acc[:, hs, ws] = c6[:, i, j]",
     "tests/test_layers_gradcheck.py -k cupy"),
    ("dilation ignored by the GPU im2col", "src/cnn_cifar/nn/kernels.py",
     "    g = ConvGeometry(kh, kw, sh, sw, ph, pw, dh, dw)", "    g = ConvGeometry(kh, kw, sh, sw, ph, pw, 1, 1)",
     "tests/test_layers_gradcheck.py tests/test_layers_reference.py -k cupy"),
    ("ReLU's GPU backward passing the gradient where the output is 0", "src/cnn_cifar/nn/kernels.py",
     "    return np.where(gate > 0, dy, 0)", "    return np.where(gate >= 0, dy, 0)",
     "tests/test_layers_gradcheck.py -k cupy"),
    ("Nesterov ignored by the GPU SGD update", "src/cnn_cifar/nn/kernels.py",
     "p_new = p - lr * (d + mu * v_new if nesterov else v_new)", "p_new = p - lr * v_new",
     "tests/test_gpu_path.py -k optimizer_device"),
    ("a non-finite loss's update not skipped on the GPU", "src/cnn_cifar/training/step.py",
     "optimizer.step(only_if=get_array_module(loss_array).isfinite(loss_array))", "optimizer.step()",
     "tests/test_gpu_path.py -k non_finite"),
    ("the device's count of correct predictions dropped when read", "src/cnn_cifar/training/trainer.py",
     '        self.partial["correct"] += int(vals["correct"])', '        self.partial["correct"] += 0',
     "tests/test_gpu_path.py -k read_nothing"),
    ("the EMA's batch-norm statistics averaged, not measured, before evaluation", "src/cnn_cifar/training/trainer.py",
     "                self.ema.update_bn()", "                pass", "tests/test_features_optim.py -k measures"),
    ("update_bn with the layers' own momentum (not the plain average)", "src/cnn_cifar/training/ema.py",
     "                    m.momentum = 1.0 / (k + 1)", "                    pass",
     "tests/test_features_optim.py -k update_bn"),
    ("update_bn with dropout on", "src/cnn_cifar/training/ema.py",
     "            m.set_p(0.0)\n", "            pass\n", "tests/test_features_optim.py -k update_bn"),
    ("the EMA's BN batches drawn from one stream across evaluations", "src/cnn_cifar/training/config.py",
     "        return lambda: BatchLoader(x[:n], y[:n], batch_size, mean, std, augment_cfg=aug,\n"
     "                                   rng=np.random.default_rng(self.seed),",
     "        shared = np.random.default_rng(self.seed)\n"
     "        return lambda: BatchLoader(x[:n], y[:n], batch_size, mean, std, augment_cfg=aug,\n"
     "                                   rng=shared,", "tests/test_features_optim.py -k resumes_exactly"),
    ("a resumed run writing its checkpoints to the default folder", "src/cnn_cifar/training/config.py",
     "    if resumed_from is not None and", "    if False and", "tests/test_cli.py -k resume"),
]
results = []
chosen = [m for m in MUTATIONS if not sys.argv[1:] or any(w in m[0] for w in sys.argv[1:])]
for what, path, old, new, tests in chosen:
    if DST.exists():
        shutil.rmtree(DST)
    top = {".venv", ".git", "data", "checkpoint", "bench-venv", "runs", "log", "viz"}
    shutil.copytree(SRC, DST, ignore=lambda d, names: [n for n in names if n == "__pycache__"
                                                       or (pathlib.Path(d) == SRC and n in top)])
    f = DST / path
    text = f.read_text()
    assert text.count(old) == 1, (what, old)
    f.write_text(text.replace(old, new))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests.split()],
                       cwd=DST, capture_output=True, text=True)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-200:]
    failed = [l.split()[1] for l in p.stdout.splitlines() if l.startswith("FAILED")]
    results.append((what, "RED" if p.returncode else "green (NOT caught)", failed[:1], last))
    print(results[-1], flush=True)
shutil.rmtree(DST.parent, ignore_errors=True)
missed = [r for r in results if r[1] != "RED"]
print(f"{len(results) - len(missed)} of {len(results)} mutations caught")
sys.exit(1 if missed else 0)
