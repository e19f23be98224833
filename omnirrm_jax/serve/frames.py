"""A video sent as a list of frames -> a lossless video file, so it goes through the same decoder (frame sampling,
pixel budget) as every other video. FFV1 in Matroska is lossless: the frames the judge sees are the pixels sent.
2 fps is the reference's sampling rate, so no frame is dropped (up to its frame cap).

Every frame is opened with the guarded image opener (`data.media.open_image`: an image over the judge's
max_input_pixels is refused before its pixels are decoded), encoded, and dropped before the next is opened, so a
request holds one decoded frame at a time."""

from __future__ import annotations

FPS = 2


def write_video(image_paths: list[str], out_path: str, fps: int = FPS, image_cfg=None) -> None:
    """Writes the images (all resized to the first one's size, made even) as a `fps` video to `out_path`;
    `image_cfg` (`data.media.ImageConfig`) bounds each frame's size. Raises `MediaError` for a refused frame."""
    import av

    from omnirrm_jax.data.media import ImageConfig, open_image

    cfg = image_cfg or ImageConfig()
    with av.open(out_path, "w", format="matroska") as container:
        stream = None
        for p in image_paths:
            im = open_image(p, cfg)
            if stream is None:
                w, h = im.size
                w, h = max(2, w - w % 2), max(2, h - h % 2)
                stream = container.add_stream("ffv1", rate=fps)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
            frame = av.VideoFrame.from_image(im.resize((w, h)) if im.size != (w, h) else im)
            del im
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
