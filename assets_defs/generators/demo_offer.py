"""Demo media generator: a personalised 1080x1080 offer card with a QR code, plus a JSON file.

This file is stored in the `asset_generate_files` table and runs in the media sandbox, once
per audience member. Copy it to write your own: define `generate_asset`, write files only
inside `temp_dir`, and return {asset_type: path}. Asset types: image, video, document,
audio, plus data files such as json or text.
"""

import json
import os

import qrcode
from PIL import Image, ImageDraw, ImageFont

SIZE = 1080
BACKGROUND = (18, 140, 126)  # WhatsApp teal
TEXT = (255, 255, 255)
QR_SIZE = 560  # at most, in pixels


def _font(size):
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _qr_code(data):
    """The QR code drawn at its size, each module a whole number of pixels: scaling a
    small one up would blur its edges and cost more than drawing it."""
    qr = qrcode.QRCode()
    qr.add_data(data)
    qr.make(fit=True)
    qr.box_size = QR_SIZE // (qr.modules_count + 2 * qr.border)
    return qr.make_image().get_image()


def generate_asset(attributes, name, msisdn, temp_dir):
    offer = attributes.get("offer", "20% off your next order")
    code = attributes.get("code", msisdn[-6:])

    card = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(card)
    draw.text((80, 90), f"Hi {name or 'there'}!", font=_font(84), fill=TEXT)
    draw.text((80, 210), offer, font=_font(52), fill=TEXT)
    draw.text((80, 290), f"Your code: {code}", font=_font(44), fill=TEXT)

    qr = _qr_code(f"https://example.com/redeem/{code}")
    card.paste(qr, ((SIZE - qr.width) // 2, 420 + (QR_SIZE - qr.height) // 2))

    image_path = os.path.join(temp_dir, "offer.jpg")
    card.save(image_path, "JPEG", quality=85)

    data_path = os.path.join(temp_dir, "offer.json")
    with open(data_path, "w") as f:
        json.dump({"name": name, "msisdn": msisdn, "offer": offer, "code": code}, f)

    return {"image": image_path, "json": data_path}
