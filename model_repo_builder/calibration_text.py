"""Text the int4 quantizer runs the model on to learn which input columns carry large activations.

Original prose, and none of it is in eval_text.py: the quality gate never sees the text the
quantizer was tuned on.
"""

CALIBRATION_TEXT = (
    "Pack a small bag with water, a map and a warm jacket before you set out. The path climbs through a "
    "forest of pine trees and then follows a ridge with wide views across the lake. In the afternoon the "
    "wind often turns, so it is wise to be back below the tree line by four o'clock.\n"
    "Our neighbour repairs old radios in his garage. He says the hardest part is not the soldering but "
    "finding the right parts, because many of the companies that made them closed long ago. Last winter "
    "he rebuilt a set from 1952, and now it plays the evening news as clearly as a new one.\n"
    "Q: How many minutes are there in a day? A: There are 24 hours of 60 minutes each, so 1,440 minutes.\n"
    "The committee will publish its decision on Friday. Until then, members are asked not to discuss the "
    "proposal in public, and any questions should be sent by email to the secretary, who will collect "
    "them and reply to everyone at once.\n"
    "def average(values):\n    return sum(values) / len(values)\n"
)
