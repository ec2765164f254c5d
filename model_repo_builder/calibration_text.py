"""Text the integer quantizers run the model on to learn its layers' input statistics (input energy per column).

Original prose, and none of it is in eval_text.py: the quality gate never sees the text the
quantizer was tuned on. It mixes topics and forms (narrative, dialogue, instructions, numbers, code)
so that no single kind of input dominates the statistics.
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
    "The tide comes in twice a day along this part of the coast, and the difference between high and low "
    "water can be more than six metres. Fishermen plan their trips around it: they leave the harbour on "
    "the falling tide and come back on the rising one, when the channel between the sandbanks is deep "
    "enough for their boats. Visitors who walk out to the island at low water must watch the clock.\n"
    '"Are you sure this is the right road?" asked Priya, looking at the empty fields on both sides. '
    '"No," said her brother, "but it goes north, and so do we." They drove on in silence until a '
    "farmer waved them down and told them, kindly, that the bridge ahead had been closed since March.\n"
    "To bind a small notebook by hand, fold ten sheets of paper in half and press the folds flat. Punch "
    "five holes along the fold with an awl, using a paper guide so that they line up. Sew through the "
    "holes with waxed thread, going in and out twice, and tie the ends inside the middle page.\n"
    "Chess players often say that the opening is about three things: developing the pieces, controlling "
    "the centre and keeping the king safe. A beginner who moves the same knight four times, or brings "
    "the queen out too early, usually finds that the opponent has gained time to do all three.\n"
    "In 1887 the town of Halden Ford had two hundred inhabitants, a mill, a chapel and a single street "
    "of wooden houses. The railway arrived nine years later, and by 1910 the population had grown to "
    "more than three thousand. Most of the new families worked at the brick works beside the line.\n"
    "Shopping list for the weekend: two litres of milk, a dozen eggs, rice, lentils, onions, garlic, "
    "a bag of apples, coffee, soap, batteries for the smoke alarm and a birthday card for Anna.\n"
    "A network switch forwards each frame only to the port where the destination device is connected. "
    "It learns these ports by reading the source address of every frame it receives and storing it in "
    "a table. When an address is not yet in the table, the switch sends the frame out of every port.\n"
    "The temperature fell from 14.5 degrees at noon to 3.2 degrees at midnight, a drop of 11.3 degrees "
    "in twelve hours. Rainfall for the month reached 86 millimetres, about 20 per cent above average, "
    "and the wettest single day, the 17th, brought 31 millimetres in less than six hours.\n"
    "Dear Mr Okafor, thank you for your letter of 3 June. I am sorry to hear that the parcel arrived "
    "damaged. We will send a replacement this week at no cost to you, and there is no need to return "
    "the broken item. Please accept our apologies for the trouble. Yours sincerely, L. Brandt.\n"
    "The octopus is a surprisingly clever animal. In experiments it has learned to open jars, to find "
    "its way through simple mazes and to recognise individual keepers. Because each of its eight arms "
    "holds many nerve cells, an arm can explore a crack in the rock while the animal watches elsewhere.\n"
    'for i in range(1, 11):\n    if i % 2 == 0:\n        print(i, "is even")\n    else:\n'
    '        print(i, "is odd")\n'
    "After the harvest the whole family helped to press the grapes. The children carried baskets from "
    "the cart to the press, the adults turned the heavy wooden screw, and the grandfather tasted the "
    "juice every hour and shook his head, saying it had been sweeter in the year he was married.\n"
    "A volcano forms where molten rock from deep below the surface finds a way up through the crust. "
    "Some volcanoes erupt quietly, with slow rivers of lava, while others explode, throwing ash high "
    "into the air. Scientists measure small earthquakes and gases to judge when an eruption is near.\n"
)
