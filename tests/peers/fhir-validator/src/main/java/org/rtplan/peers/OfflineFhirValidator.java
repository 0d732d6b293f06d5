package org.rtplan.peers;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import com.google.gson.Gson;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;

/**
 * Offline FHIR instance validation for the tests.
 *
 * <p>Usage: {@code java -jar fhir-validator.jar R4|R5 < resources.json}. Stdin is a JSON array of
 * resources; stdout has one JSON line per resource, in order:
 * {@code {"ok": bool, "errors": ["location: text"], "warnings": ["location: text"]}}.
 * No terminology server is configured, so codes from external systems (SNOMED CT, LOINC) are
 * reported as not checkable (information), never fetched.
 */
public final class OfflineFhirValidator {
  private OfflineFhirValidator() {}

  public static void main(String[] args) throws Exception {
    String version = args.length > 0 ? args[0] : "R4";
    FhirContext ctx = "R5".equals(version) ? FhirContext.forR5() : FhirContext.forR4();
    ValidationSupportChain chain =
        new ValidationSupportChain(
            new DefaultProfileValidationSupport(ctx),
            new CommonCodeSystemsTerminologyService(ctx),
            new InMemoryTerminologyServerValidationSupport(ctx),
            new SnapshotGeneratingValidationSupport(ctx));
    FhirInstanceValidator module = new FhirInstanceValidator(chain);
    FhirValidator validator = ctx.newValidator().registerValidatorModule(module);

    Reader in = new InputStreamReader(System.in, StandardCharsets.UTF_8);
    JsonArray resources = JsonParser.parseReader(in).getAsJsonArray();
    PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    Gson gson = new Gson();
    for (JsonElement resource : resources) {
      ValidationResult result = validator.validateWithResult(resource.toString());
      List<String> errors = new ArrayList<>();
      List<String> warnings = new ArrayList<>();
      for (SingleValidationMessage m : result.getMessages()) {
        String line = m.getLocationString() + ": " + m.getMessage();
        ResultSeverityEnum severity = m.getSeverity();
        if (severity == ResultSeverityEnum.ERROR || severity == ResultSeverityEnum.FATAL) {
          errors.add(line);
        } else if (severity == ResultSeverityEnum.WARNING) {
          warnings.add(line);
        }
      }
      JsonObject line = new JsonObject();
      line.addProperty("ok", errors.isEmpty());
      line.add("errors", gson.toJsonTree(errors));
      line.add("warnings", gson.toJsonTree(warnings));
      out.println(gson.toJson(line));
    }
    out.flush();
  }
}
