from django.db import migrations, models


def add_settings(apps, schema_editor):
    Setting = apps.get_model("shop", "Setting")
    for key, value in [("site_name", "conntrace demo shop"), ("currency", "EUR"), ("theme", "plain")]:
        Setting.objects.using(schema_editor.connection.alias).get_or_create(
            key=key, defaults={"value": value}
        )


class Migration(migrations.Migration):
    initial = True
    dependencies: list = []

    operations = [
        migrations.CreateModel(
            name="Setting",
            fields=[
                (
                    "id",
                    models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID"),
                ),
                ("key", models.CharField(max_length=100, unique=True)),
                ("value", models.CharField(max_length=200)),
            ],
        ),
        migrations.RunPython(add_settings, migrations.RunPython.noop),
    ]
