"""Log-mel frontend (docs/spec.md §5.1) as exportable torch code.

The STFT is a strided Conv1d whose kernels are the Hann-windowed DFT basis: it lowers to any backend (torch.stft does
not) and handles a dynamic signal length. The log floor is the fixed `global_log_mel_max - 8` of Mistral's reference,
not a per-call maximum, so a streaming window computes exactly the offline frames it covers.

Frame f is centred on sample hop*f. Offline, the signal is reflect-padded by n_fft/2 on each side and the last frame
dropped, giving len/hop frames. A streaming step for token t needs the frames 8t..8t+7, whose windows span samples
[hop*8t - n_fft/2, hop*(8t+7) + n_fft/2): `stream_window_samples` samples, no padding involved.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import EncoderArgs

LOG_MEL_RANGE = 8.0  # the floor sits this far (in log10) below global_log_mel_max
LOG_EPS = 1e-10


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mels = freq / f_sp
    log_region = freq >= min_log_hz
    mels[log_region] = min_log_mel + np.log(freq[log_region] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    freq = mels * f_sp
    log_region = mels >= min_log_mel
    freq[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return freq


def mel_filter_bank(n_mels: int, n_fft: int, sampling_rate: int) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters over 0..sr/2, float64, shape (n_mels, n_fft//2 + 1)."""
    fft_freqs = np.linspace(0, sampling_rate / 2, n_fft // 2 + 1)
    mel_edges = np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sampling_rate / 2]))[0], n_mels + 2)
    filter_freqs = _mel_to_hz(mel_edges)
    filter_diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / filter_diff[:-1]
    up = slopes[:, 2:] / filter_diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (filter_freqs[2 : n_mels + 2] - filter_freqs[:n_mels])
    return filters.T


def dft_kernels(n_fft: int) -> np.ndarray:
    """Periodic-Hann-windowed real and imaginary DFT bases as Conv1d weights, shape (2*(n_fft//2+1), 1, n_fft)."""
    n = np.arange(n_fft)
    window = 0.5 * (1 - np.cos(2 * np.pi * n / n_fft))
    k = np.arange(n_fft // 2 + 1)[:, None]
    angle = 2 * np.pi * k * n[None, :] / n_fft
    basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window[None, :]
    return basis[:, None, :]


def _dense(array: np.ndarray) -> torch.Tensor:
    """fp32 copy with fresh row-major strides."""
    return torch.zeros(array.shape, dtype=torch.float32).copy_(torch.from_numpy(array))


class LogMel(nn.Module):
    """Waveform (samples,) float32 -> normalised log-mel (1, n_mels, frames)."""

    def __init__(self, args: EncoderArgs):
        super().__init__()
        self.hop = args.hop_length
        self.n_fft = args.window_size
        self.n_freqs = self.n_fft // 2 + 1
        self.log_floor = args.global_log_mel_max - LOG_MEL_RANGE
        # torch.tensor copies into fresh row-major strides (numpy views carry zero and transposed strides, which
        # ExecuTorch rejects for constants).
        self.register_buffer("dft", _dense(dft_kernels(self.n_fft)))
        filters = mel_filter_bank(args.num_mel_bins, self.n_fft, args.sampling_rate)
        self.register_buffer("filters", _dense(filters))

    def _log_mel(self, signal: torch.Tensor) -> torch.Tensor:
        """Frames of a signal that already holds n_fft/2 samples of context on each side: (1, n_mels, frames)."""
        spectrum = F.conv1d(signal.reshape(1, 1, -1), self.dft, stride=self.hop)  # (1, 2*n_freqs, frames)
        real, imag = spectrum[:, : self.n_freqs], spectrum[:, self.n_freqs :]
        power = real * real + imag * imag
        mel = torch.matmul(self.filters, power)  # (1, n_mels, frames)
        log_mel = torch.clamp(torch.log10(torch.clamp(mel, min=LOG_EPS)), min=self.log_floor)
        return (log_mel + 4.0) / 4.0

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Whole signal (offline): reflect padding, last frame dropped -> len // hop frames."""
        half = self.n_fft // 2
        padded = F.pad(waveform.reshape(1, 1, -1), (half, half), mode="reflect")
        return self._log_mel(padded)[:, :, :-1]

    def stream_window(self, window: torch.Tensor) -> torch.Tensor:
        """One streaming step: `stream_window_samples` samples -> the frames they fully cover."""
        return self._log_mel(window)


def stream_window_samples(args: EncoderArgs, frames: int) -> int:
    """Samples a streaming step needs to compute `frames` mel frames on the offline grid."""
    return (frames - 1) * args.hop_length + args.window_size


def stream_window_left_context(args: EncoderArgs) -> int:
    """Samples the streaming window starts before the step's first sample (n_fft/2)."""
    return args.window_size // 2
