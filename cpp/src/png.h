// PNG specifics: how a PNG says it is turned, read where Pillow reads it.
#pragma once

#include <cstdint>
#include <vector>

namespace classify {

bool is_png(const std::vector<uint8_t>& bytes);

// The orientation the service applies to a PNG (Pillow's Image.getexif): the EXIF block of an eXIf chunk (or of
// a tEXt chunk named "exif"), else ImageMagick's hex "Raw profile type exif" (tEXt or zTXt); when that block has
// no orientation tag, XMP's tiff:Orientation (a text chunk named "XML:com.adobe.xmp"). Of chunks saying the same
// thing, the last counts, as in Pillow's dictionary. 1 when none says anything; OpenCV applies none of them.
unsigned png_orientation(const std::vector<uint8_t>& bytes);

}  // namespace classify
