from django import template

register = template.Library()


@register.simple_tag
def field_widget(field):
    """The field's input, marked aria-invalid when it has errors (Pico colours it)."""
    attrs = {"aria-invalid": "true"} if field.errors else {}
    return field.as_widget(attrs=attrs)


@register.filter
def duration_words(value) -> str:
    """A timedelta as '15 minutes' / '2 hours'."""
    seconds = int(value.total_seconds()) if value else 0
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


@register.filter
def change_value(value) -> str:
    """One side of an audit change, readable: lists joined, ISO times cut to the second."""
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(change_value(v) for v in value) or "—"
    text = str(value)
    if len(text) >= 19 and text[4:5] == "-" and text[10:11] == "T":
        return text[:19].replace("T", " ")
    return text


@register.filter
def is_change_pair(value) -> bool:
    """[before, after] as audit_record's diff writes it (other events carry plain values)."""
    return isinstance(value, list) and len(value) == 2
