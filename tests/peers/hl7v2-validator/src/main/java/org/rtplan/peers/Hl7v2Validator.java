package org.rtplan.peers;

import ca.uhn.hl7v2.DefaultHapiContext;
import ca.uhn.hl7v2.HL7Exception;
import ca.uhn.hl7v2.HapiContext;
import ca.uhn.hl7v2.model.Message;
import ca.uhn.hl7v2.parser.PipeParser;
import ca.uhn.hl7v2.util.Terser;
import ca.uhn.hl7v2.validation.impl.ValidationContextFactory;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.Charset;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;

/**
 * Validate ER7 messages with HAPI's default rules; print one JSON line per message on stdout.
 *
 * <p>Input: files named on the command line (one message each), or stdin holding messages
 * separated by a blank line ("\r\r" or "\n\n"). Each message is decoded STRICTLY in the charset its
 * MSH-18 declares ("UNICODE UTF-8" / "UNICODE" / "8859/1" / "8859/15" / empty = ASCII), so a message whose bytes do not
 * match its declaration fails. Output per message:
 * {"index":N,"ok":true,"structure":"OMI_O23","version":"2.5.1","roundtrip":true,"reencoded":""} or
 * {"index":N,"ok":false,"error":"..."} (also for a conformance failure, "conformance: ..."); "roundtrip" says HAPI re-encodes the message identically; else "reencoded" is HAPI's first differing segment.
 */
public final class Hl7v2Validator {
  public static void main(String[] args) throws IOException {
    List<byte[]> messages = new ArrayList<>();
    if (args.length > 0) {
      for (String a : args) messages.add(Files.readAllBytes(Path.of(a)));
    } else {
      String all = new String(System.in.readAllBytes(), StandardCharsets.ISO_8859_1);
      for (String m : all.replace("\r\n", "\r").replace('\n', '\r').split("\r\r+"))
        if (!m.isBlank()) messages.add(m.strip().getBytes(StandardCharsets.ISO_8859_1));
    }
    Properties conformance = new Properties();
    try (var in = Hl7v2Validator.class.getResourceAsStream("/conformance.properties")) {
      conformance.load(in);
    }
    try (HapiContext ctx = new DefaultHapiContext()) {
      ctx.setValidationContext(ValidationContextFactory.defaultValidation());
      PipeParser parser = ctx.getPipeParser();
      for (int i = 0; i < messages.size(); i++) {
        String out;
        try {
          String er7 = decode(messages.get(i));
          Message m = parser.parse(er7);
          conform(m, conformance);
          String[] ours = er7.split("\r");
          String[] theirs = parser.encode(m).split("\r");
          String diff = "";
          for (int s = 0; s < Math.max(ours.length, theirs.length) && diff.isEmpty(); s++) {
            String a = s < ours.length ? ours[s] : "", b = s < theirs.length ? theirs[s] : "";
            if (!a.equals(b)) diff = b;
          }
          out = "\"ok\":true,\"structure\":" + q(m.getName()) + ",\"version\":" + q(m.getVersion())
              + ",\"roundtrip\":" + diff.isEmpty() + ",\"reencoded\":" + q(diff);
        } catch (HL7Exception | CharacterCodingException e) {
          String detail = e.getMessage();
          if (e instanceof HL7Exception h && h.getDetail() != null) detail += ": " + h.getDetail();
          out = "\"ok\":false,\"error\":" + q(detail);
        }
        System.out.println("{\"index\":" + i + "," + out + "}");
      }
    }
  }

  /**
   * Our conformance profile (src/main/resources/conformance.properties): the structure's
   * required fields hold a value, and coded fields hold a value of the version's HL7 table.
   */
  private static void conform(Message m, Properties rules) throws HL7Exception {
    Terser t = new Terser(m);
    String required = rules.getProperty("required." + m.getName(), "");
    for (String path : required.split(",")) {
      if (path.isBlank()) continue;
      String value = t.get("/." + path);
      if (value == null || value.isBlank())
        throw new HL7Exception("conformance: " + path + " is required in " + m.getName());
    }
    String prefix = "table." + m.getVersion() + ".";
    for (String key : rules.stringPropertyNames()) {
      if (!key.startsWith(prefix)) continue;
      String path = key.substring(prefix.length());
      List<String> allowed = Arrays.asList(rules.getProperty(key).split(","));
      String value;
      try {
        value = t.get("/." + path);
      } catch (HL7Exception absent) {
        continue;  // the segment is not in this message
      }
      if (value != null && !value.isEmpty() && !allowed.contains(value))
        throw new HL7Exception("conformance: " + path + " value '" + value
            + "' is not in the HL7 table of v" + m.getVersion());
    }
  }

  /** Decode with the charset named in MSH-18; malformed bytes are an error, never replaced. */
  private static String decode(byte[] raw) throws CharacterCodingException {
    String latin = new String(raw, StandardCharsets.ISO_8859_1);
    String msh = latin.split("\r", 2)[0];
    String[] f = msh.length() > 3 ? msh.split(java.util.regex.Pattern.quote(msh.substring(3, 4)), -1) : new String[0];
    String declared = f.length > 17 ? f[17].split("\\^")[0] : "";
    Charset cs = switch (declared) {
      case "UNICODE UTF-8", "UNICODE" -> StandardCharsets.UTF_8;  // UNICODE: UTF-8 by agreement
      case "8859/1" -> StandardCharsets.ISO_8859_1;
      case "8859/15" -> Charset.forName("ISO-8859-15");
      case "", "ASCII" -> StandardCharsets.US_ASCII;
      default -> throw new CharacterCodingException() {
        @Override public String getMessage() { return "MSH-18 charset not supported here: " + declared; }
      };
    };
    try {
      return cs.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
          .onUnmappableCharacter(CodingErrorAction.REPORT).decode(ByteBuffer.wrap(raw)).toString();
    } catch (CharacterCodingException e) {
      throw new CharacterCodingException() {
        @Override public String getMessage() { return "bytes are not valid " + cs + " (MSH-18 '" + declared + "')"; }
      };
    }
  }

  private static String q(String s) {
    StringBuilder b = new StringBuilder("\"");
    for (char c : (s == null ? "" : s).toCharArray()) {
      if (c == '"' || c == '\\') b.append('\\').append(c);
      else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
      else b.append(c);
    }
    return b.append('"').toString();
  }
}
