"""TFDS builder `video_inpainting`: frames of a video data set as uint8 ArrayRecord records."""
