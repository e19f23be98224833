"""A video sent as a list of frames -> a lossless video file, so it goes through the same decoder (frame sampling,
pixel budget) as every other video. FFV1 in Matroska is lossless: the frames the judge sees are the pixels sent.
2 fps is the reference's sampling rate, so no frame is dropped (up to its frame cap)."""

from __future__ import annotations

FPS = 2


def write_video(image_paths: list[str], out_path: str, fps: int = FPS) -> None:
    """Writes the images (all resized to the first one's size, made even) as a `fps` video to `out_path`."""
    import av
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in image_paths]
    w, h = images[0].size
    w, h = max(2, w - w % 2), max(2, h - h % 2)
    with av.open(out_path, "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
        for im in images:
            frame = av.VideoFrame.from_image(im.resize((w, h)) if im.size != (w, h) else im)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
