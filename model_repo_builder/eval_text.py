"""The fixed text every build is evaluated on: twenty-six short paragraphs of original prose.

About 1,900 SmolLM2 tokens, so that one token is about 0.05% of the top-1 agreement figure. (Builds
before builder 1.1.0 used the first six paragraphs only, 383 tokens: one token was 0.26%.)
"""

PARAGRAPHS = (
    (
        "The city council met on Tuesday evening to discuss the new budget for the coming year. Several "
        "residents spoke about the need for better roads and more funding for public schools. After a "
        "long debate, the council agreed to raise spending on education by five percent, while delaying "
        "some planned repairs to the old library building until next spring."
    ),
    (
        "The river that runs through the valley is fed by snow from the mountains. In early summer the "
        "water rises quickly, and farmers along the banks open small channels to carry it to their "
        "fields. By late August the river is low and slow, and children can walk across it on the smooth "
        "stones near the mill."
    ),
    (
        "A good recipe for bread needs only flour, water, salt and yeast. Mix the ingredients, knead the "
        "dough for ten minutes, and let it rest in a warm place until it has doubled in size. Shape the "
        "loaf, let it rise again, and bake it in a hot oven until the crust is brown and the bottom "
        "sounds hollow when tapped."
    ),
    (
        "Computers store numbers in binary, using only the digits zero and one. A group of eight binary "
        "digits is called a byte, and it can represent any whole number from zero to two hundred and "
        "fifty five. Larger numbers use several bytes, and numbers with a fractional part are stored in a "
        "format that keeps a fixed number of significant digits."
    ),
    (
        "The train to the coast leaves the central station every hour. The journey takes about two hours "
        "and passes through small towns, green hills and long tunnels. Many travellers bring a book or a "
        "sandwich, and on clear days the first view of the sea appears just before the last stop."
    ),
    (
        "Learning a new language takes patience. It helps to read a little every day, to listen to people "
        "speaking at a natural pace, and to practise simple sentences out loud. Mistakes are a normal "
        "part of the process, and most learners find that their confidence grows faster than they "
        "expected."
    ),
    (
        "The old lighthouse on the northern cape has not guided a ship for thirty years. Its lamp was "
        "replaced by a small automatic beacon on a steel pole, and the keeper's cottage now belongs to a "
        "society of volunteers. On summer weekends they open the tower to visitors, who climb the narrow "
        "spiral stairs and look out over the rocks where the waves break white even on calm days."
    ),
    (
        "Tomatoes grow best in a sunny spot with rich, well drained soil. Plant them deeply, so that part "
        "of the stem is buried, and water them at the base rather than on the leaves. As the plants grow, "
        "tie them loosely to stakes and pinch out the small shoots that appear between the main stem and "
        "the branches. The first fruit is usually ready to pick about two months after planting."
    ),
    (
        "When Maria opened the letter, she recognised her grandmother's careful handwriting at once. The "
        "letter had been written many years earlier and forgotten in a drawer of the old desk. It "
        "described a long journey by ship, a storm that lasted three days, and the morning when the "
        "passengers finally saw the harbour lights. Maria read it twice before she put it back in the "
        "envelope."
    ),
    (
        "A simple electric circuit needs a source of energy, such as a battery, a path for the current, "
        "and something that uses the energy, such as a lamp or a motor. If the path is broken anywhere, "
        "the current stops and the lamp goes dark. A switch is simply a controlled break in the circuit, "
        "which lets us close or open the path whenever we want."
    ),
    (
        "The football season ended with a close match between the two best teams in the league. The home "
        "side scored early, but the visitors kept calm, passed the ball patiently and equalised just "
        "before half time. In the second half both teams had chances, and the winning goal came from a "
        "corner kick in the final minute, headed in by a young defender who had joined the club that "
        "year."
    ),
    (
        "Most of the village still remembers the winter when the snow did not stop for a week. The roads "
        "were closed, the school was shut, and the baker delivered bread on a sledge pulled by his two "
        "dogs. Neighbours shared firewood and soup, and in the evenings families gathered in the hall of "
        "the church, which was the only building with a generator."
    ),
    (
        "To change a flat tyre on a bicycle, first remove the wheel and let out any air that is left. Use "
        "two tyre levers to lift one side of the tyre over the rim, then pull out the inner tube. Check "
        "the inside of the tyre for glass or thorns, fit a new tube, and push the tyre back onto the rim "
        "with your thumbs before pumping it up to the pressure printed on its side."
    ),
    (
        "Bees collect nectar from flowers and turn it into honey, which they store in wax cells inside "
        "the hive. A strong colony may contain more than forty thousand workers in the middle of summer, "
        "but only one queen. The workers share the tasks of the hive according to their age: the youngest "
        "clean the cells and feed the larvae, while the oldest fly out to gather food."
    ),
    (
        "The museum in the market square holds a small but interesting collection of clocks. The oldest "
        "one was built by a local blacksmith more than three hundred years ago and still keeps good time, "
        "although it has only an hour hand. Visitors who arrive just before noon can hear dozens of "
        "clocks strike twelve together, each with a slightly different voice."
    ),
    (
        "Good sleep is one of the simplest ways to stay healthy. Most adults need between seven and nine "
        "hours each night. It helps to go to bed at the same time every day, to keep the bedroom dark and "
        "cool, and to avoid heavy meals and bright screens late in the evening. A short walk in daylight "
        "during the morning also makes it easier to fall asleep at night."
    ),
    (
        "The annual music festival takes place in a large park at the edge of the town. For three days "
        "the lawns are covered with tents, food stalls and small stages, and bands play from noon until "
        "late at night. Some of the groups are well known, while others are students who have never "
        "performed for such a large audience. Tickets usually sell out within a week."
    ),
    (
        "Maps have changed a great deal over the centuries. Early maps were drawn by hand from the "
        "reports of travellers and were often wrong about distances and the shapes of coastlines. Later, "
        "surveyors measured the land with chains, angles and careful arithmetic. Today satellites record "
        "the surface of the earth in fine detail, and a phone can show our position within a few metres."
    ),
    (
        "The small cafe near the university opens at seven in the morning. Students come in with their "
        "laptops and stay for hours over a single cup of coffee, while office workers stop only long "
        "enough to buy a croissant on their way to the bus. The owner knows most of her regular customers "
        "by name and often starts preparing their order as soon as they walk through the door."
    ),
    (
        "Saving money becomes easier with a plan. Write down what you earn and what you spend in a normal "
        "month, and look for costs that could be reduced, such as subscriptions that are rarely used. "
        "Setting aside a fixed amount on the day the salary arrives works better than saving whatever is "
        "left at the end of the month, because by then there is usually very little left."
    ),
    (
        "Every spring the swallows return to the barn behind the farmhouse. They repair last year's nests "
        "with mud from the edge of the pond and line them with feathers and dry grass. By early June the "
        "first chicks can be heard calling for food, and the parents fly in and out of the open door from "
        "dawn until dusk, catching insects above the meadow."
    ),
    (
        "A spreadsheet is a grid of cells arranged in rows and columns. Each cell can hold a number, a "
        "piece of text or a formula that calculates a value from other cells. When one number changes, "
        "every formula that depends on it is updated at once, which makes spreadsheets useful for "
        "budgets, schedules and any task where the same calculation must be repeated many times."
    ),
    (
        "The mountain hut stands at the end of a steep path, about four hours' walk from the nearest "
        "road. It has twenty beds, a wood stove and a long table where walkers eat together in the "
        "evening. There is no shop, so everyone carries their own food, and the warden asks guests to "
        "take their rubbish back down the valley when they leave."
    ),
    (
        "Writing a clear report takes more planning than most people expect. Start with the main "
        "conclusion, so that a busy reader learns the most important point first. Then give the evidence "
        "in a logical order, use short paragraphs and plain words, and remove anything that does not "
        "support the argument. Finally, read the whole text aloud to find sentences that are too long."
    ),
    (
        "On the night of the storm, the power failed just after nine o'clock. Tom found a torch in the "
        "kitchen drawer and lit two candles on the table. Outside, the wind bent the trees and rain "
        "hammered against the windows, but inside the house it was quiet and warm. The family played "
        "cards until midnight, and by morning the lights had come back on."
    ),
    (
        "Glass is made by heating sand, soda and lime until they melt into a thick liquid. While it is "
        "still hot, the glass can be blown into bottles, pressed into moulds or floated on a bath of "
        "molten tin to make flat sheets for windows. As it cools slowly, it becomes hard and clear, and "
        "it can be melted again and recycled many times without losing its quality."
    ),
)
EVAL_TEXT = "\n".join(PARAGRAPHS)


def eval_sentences() -> list[str]:
    """The text split into sentences, for embedding models."""
    sentences = EVAL_TEXT.replace("\n", " ").split(". ")
    return [sentence.strip().rstrip(".") + "." for sentence in sentences if sentence.strip()]
