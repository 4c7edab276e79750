"""People labelling: the terminal oracle (:mod:`.terminal`), the label schema and suggestions every human tool
shares (:mod:`.label_schema`), Label Studio's formats (:mod:`.label_studio`), the file exchange with its oracle,
export and import (:mod:`.files`) and their command-line verbs (:mod:`.commands`). Registered by the core plugin's
manifest; the kernel imports none of it."""
