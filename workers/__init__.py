"""The worker side of zimg-queue: RQ job, inference client, image storage, inference server."""
