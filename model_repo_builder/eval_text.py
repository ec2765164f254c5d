"""The fixed text every build is evaluated on (original prose, six short paragraphs)."""

EVAL_TEXT = (
    'The city council met on Tuesday evening to discuss the new budget for the coming year. Several '
    'residents spoke about the need for better roads and more funding for public schools. After a long '
    'debate, the council agreed to raise spending on education by five percent, while delaying some '
    'planned repairs to the old library building until next spring.\n'
    'The river that runs through the valley is fed by snow from the mountains. In early summer the water '
    'rises quickly, and farmers along the banks open small channels to carry it to their fields. By late '
    'August the river is low and slow, and children can walk across it on the smooth stones near the '
    'mill.\n'
    'A good recipe for bread needs only flour, water, salt and yeast. Mix the ingredients, knead the '
    'dough for ten minutes, and let it rest in a warm place until it has doubled in size. Shape the loaf,'
    ' let it rise again, and bake it in a hot oven until the crust is brown and the bottom sounds hollow '
    'when tapped.\n'
    'Computers store numbers in binary, using only the digits zero and one. A group of eight binary '
    'digits is called a byte, and it can represent any whole number from zero to two hundred and fifty '
    'five. Larger numbers use several bytes, and numbers with a fractional part are stored in a format '
    'that keeps a fixed number of significant digits.\n'
    'The train to the coast leaves the central station every hour. The journey takes about two hours and '
    'passes through small towns, green hills and long tunnels. Many travellers bring a book or a '
    'sandwich, and on clear days the first view of the sea appears just before the last stop.\n'
    'Learning a new language takes patience. It helps to read a little every day, to listen to people '
    'speaking at a natural pace, and to practise simple sentences out loud. Mistakes are a normal part of'
    ' the process, and most learners find that their confidence grows faster than they expected.'
)


def eval_sentences() -> list[str]:
    """The text split into sentences, for embedding models."""
    sentences = EVAL_TEXT.replace("\n", " ").split(". ")
    return [sentence.strip().rstrip(".") + "." for sentence in sentences if sentence.strip()]
