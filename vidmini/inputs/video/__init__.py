"""The video input layer: probe a file, plan which frames to sample, decode them in bounded memory."""

from vidmini.inputs.video.frames import DecodeReport, FrameBatch, FrameGeometry
from vidmini.inputs.video.plan import SamplingPlan, make_plan
from vidmini.inputs.video.probe import VideoError, VideoInfo, probe
from vidmini.inputs.video.stream import FrameStream, StreamOptions, choose_backend, decode_all

__all__ = ["DecodeReport", "FrameBatch", "FrameGeometry", "FrameStream", "SamplingPlan", "StreamOptions", "VideoError", "VideoInfo",
           "choose_backend", "decode_all", "make_plan", "probe"]
