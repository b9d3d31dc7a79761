"""`edge-calib demo`: the whole loop on real digits (`digits`) and on CamVid day -> dusk
(`camvid`)."""
